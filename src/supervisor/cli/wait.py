"""`sjob wait ID...`: wait until jobs have ended and exit with the last one's status, as the shell's `wait` does
for its children: `sjob run -d` several, then `sjob wait` for them."""

import argparse
import json
import sys
import time

from supervisor.cli.command import Argument, Command, Complete, Many, Option
from supervisor.cli.exitcodes import ExitCode, of_job
from supervisor.client import Client
from supervisor.errors import invalid_argument
from supervisor.protocol import Job, parse_job_id, to_wire
from supervisor.quantities import format_duration, parse_duration

# Poll the job's status, as `sjob stop` does: following it would make sjobd read all its output only to skip it,
# and would need the right to read its logs. From 0.1 s up to 2 s between looks: a short job is seen to end at
# once, a long one costs sjobd a status call now and then.
FIRST_POLL = 0.1
LAST_POLL = 2.0


def main(args: argparse.Namespace) -> int:
    job_ids = [parse_job_id(text) for text in args.ids]  # all malformed ids fail before any waiting
    timeout_usec = parse_duration(args.timeout, "--timeout") if args.timeout is not None else None
    if timeout_usec == 0:
        raise invalid_argument(f"--timeout {args.timeout!r}: must be more than zero", hint="for example 10min")
    deadline = None if timeout_usec is None else time.monotonic() + timeout_usec / 1e6
    ended: list[Job] = []
    with Client() as client:
        jobs = [client.status(job_id) for job_id in job_ids]  # and all unknown ones too
        for job in jobs:
            final = wait_ended(client, job, deadline)
            if final is None:
                sys.stderr.write(f"sjob: job {job.id} has not ended within {format_duration(timeout_usec or 0)}\n")
                return ExitCode.TIMED_OUT
            ended.append(final)
    if args.json:
        sys.stdout.write(json.dumps([to_wire(job) for job in ended], indent=2) + "\n")
    return of_job(ended[-1])


def wait_ended(client: Client, job: Job, deadline: float | None) -> Job | None:
    """The job once it has ended, or None if the deadline passes first."""
    pause = FIRST_POLL
    while not job.state.finished:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            pause = min(pause, left)
        time.sleep(pause)
        pause = min(pause * 1.5, LAST_POLL)
        job = client.status(job.id)
    return job


COMMAND = Command(
    name="wait",
    description="""Wait until each job ID has ended, then exit with the status of the last one given, as the shell's
wait does: its exit status, 128+N when signal N killed it, 124 when it ran over its --timeout. Jobs that have
already ended count at once. An id that is malformed or not one of your jobs fails before any waiting.""",
    options=(
        Option(("--timeout",), "give up after DURATION and exit 124: 30s, 10min, 1h 30min", metavar="DURATION"),
        Option(("--json",), "print the ended jobs as a JSON array"),
    ),
    arguments=(Argument("ids", "ID", "the jobs to wait for", Many.some, Complete.running_jobs),),
    handler=main,
)
