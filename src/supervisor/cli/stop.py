"""`sjob stop ID`: stop a job (SIGTERM, then SIGKILL after a grace period), or send it a signal; a queued job
leaves its queue. The id of a timer removes the timer (issue J).

Like `systemctl stop`, it waits until the job has ended. While it waits it says so on stderr when stderr is a
terminal (as systemd shows a stop job that takes long only on the console): that SIGTERM went out, how long the grace
period is, and when it is over and SIGKILL goes to what is left. Piped or scripted, it prints only the result.
"""

import argparse
import json
import signal
import sys
import time

from supervisor.cli.command import Argument, Command, Complete, Option
from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import (
    MAX_GRACE_USEC,
    REMOVED_FROM_QUEUE,
    Job,
    Timer,
    parse_job_id,
    parse_signal,
    signal_name,
    to_wire,
)
from supervisor.quantities import format_duration, parse_duration

STOP_POLL = 0.2  # seconds between looks at a stopping job


def main(args: argparse.Namespace) -> None:
    from supervisor.cli import render  # noqa: PLC0415

    job_id = parse_job_id(args.id)
    grace_usec = parse_duration(args.grace, "--grace") if args.grace is not None else None
    signo = parse_signal(args.signal) if args.signal is not None else None  # a bad name fails here, in our words
    with Client() as client:
        try:
            job = client.stop(job_id, signal=args.signal, grace_usec=grace_usec)
        except SjobError as e:
            if e.code is not ErrorCode.NoSuchJob or args.signal is not None or args.grace is not None:
                raise
            # Not a job of ours: perhaps a timer (jobs and timers share one id space). If not that either, sjobd
            # answers as for a job, in the same words.
            timer = client.remove_timer(job_id)
            say(args, timer, removed(timer))
            return
        if job.result == REMOVED_FROM_QUEUE:  # a queued job: it left the queue, never having run
            say(args, job, f"job {job.id} {job.message}")
            return
        if job.state.finished:
            say(args, job, f"job {job.id} has already ended ({render.outcome(job)}); nothing to stop")
            return
        if signo is not None:
            say(args, job, f"sent {signal_name(signo)} to job {job.id}")
            return
        if args.no_wait:
            say(args, job, f"stopping job {job.id}")
            return
        final = wait_stopped(client, job, MAX_GRACE_USEC if grace_usec is None else grace_usec)
    say(args, final, f"job {final.id} {render.outcome(final)}")


def wait_stopped(client: Client, job: Job, grace_usec: int) -> Job:
    # Poll rather than follow: following would read all the job's output (a fork bomb's error messages can be a
    # great many) only to skip it.
    progress = sys.stderr.isatty()
    if progress:
        sys.stderr.write(
            f"sjob: SIGTERM sent to job {job.id}; waiting for it to end, SIGKILL in {format_duration(grace_usec)}\n"
        )
    kill_at = time.monotonic() + grace_usec / 1e6
    told = not progress
    while not job.state.finished:
        time.sleep(STOP_POLL)
        job = client.status(job.id)
        # Still there after the grace period, or seen only once SIGKILL has ended it (between two looks).
        if not told and ((time.monotonic() >= kill_at and not job.state.finished) or job.signal == signal.SIGKILL):
            sys.stderr.write(f"sjob: job {job.id} is still there after the grace period: SIGKILL sent\n")
            told = True
    return job


def say(args: argparse.Namespace, item: Job | Timer, words: str) -> None:
    sys.stdout.write(json.dumps(to_wire(item), indent=2) + "\n" if args.json else words + "\n")


def removed(timer: Timer) -> str:
    """What `sjob stop` says of a timer it was given."""
    if timer.removed_by is not None:
        return f"timer {timer.id} removed ({timer.message})"
    return f"timer {timer.id} is {timer.state.value}: {timer.message}; nothing to remove"


COMMAND = Command(
    name="stop",
    description="""Stop job ID as systemctl stop stops a unit: SIGTERM to all its processes, then SIGKILL to what is
left after the grace period (default and at most 90s, the job unit's TimeoutStopSec, as systemd's default), and wait
until it has ended. On a terminal it says on stderr that it is waiting and when SIGKILL goes out. With --signal it
only sends that signal to all the job's processes (sjob's output forwarder ignores it; once the job is stopping,
to its main process alone) and returns.

A job waiting in your queue (sjob run --queue) leaves it and never runs. A retried job is not run again. ID may also
be a timer's (sjob timers): the timer is removed; a run under way goes on (sjob stop RUN stops it), and the
jobs it ran stay listed.""",
    options=(
        Option(("--grace",), "time between SIGTERM and SIGKILL: 10s, 1min 30s (at most 90s)", metavar="DURATION"),
        Option(
            ("-s", "--signal"),
            "only send SIGNAL (HUP, USR1, ... or a number) and return",
            metavar="SIGNAL",
            complete=Complete.signals,
        ),
        Option(("--no-wait",), "return once the stop is requested"),
        Option(("--json",), "print the job as JSON: as it ended, or, with --no-wait or --signal, as it is"),
    ),
    arguments=(Argument("id", "ID", "the job to stop, or the timer to remove", complete=Complete.running_jobs),),
    handler=main,
)
