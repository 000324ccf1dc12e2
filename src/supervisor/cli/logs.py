"""`sjob logs ID`: what a job wrote, exactly, from its journal records; -f follows it to the end."""

import argparse

from supervisor.cli.command import Argument, Command, Complete, Option
from supervisor.cli.exitcodes import ExitCode, of_job
from supervisor.cli.output import OutputCopier
from supervisor.client import Client
from supervisor.errors import invalid_argument
from supervisor.protocol import Stream, parse_job_id


def main(args: argparse.Namespace) -> int:
    job_id = parse_job_id(args.id)
    if args.stdout and args.stderr:
        raise invalid_argument("--stdout and --stderr exclude each other", hint="leave both out for both streams")
    streams = [Stream.stdout] if args.stdout else [Stream.stderr] if args.stderr else None
    copier = OutputCopier(as_json=args.json)
    try:
        with Client() as client:
            job = copier.copy(client.follow_batches(job_id, wait=args.follow, streams=streams))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED  # the job goes on: logs only watches
    return of_job(job) if args.follow else ExitCode.OK


COMMAND = Command(
    name="logs",
    description="""Print everything job ID wrote, from its very start: stdout to stdout and stderr to stderr, byte
for byte (blank lines, carriage returns and all), read from journald. With -f, keep printing until the job ends, then
exit with its status, as 'sjob run' would have.""",
    options=(
        Option(("-f", "--follow"), "keep printing until the job ends; exit with its status"),
        Option(("--stdout",), "only what the job wrote to stdout"),
        Option(("--stderr",), "only what the job wrote to stderr"),
        Option(
            ("--json",),
            "one JSON object per piece of output: timestamp, usec, seq, stream, and text (or "
            "base64 where it is not UTF-8)",
        ),
    ),
    arguments=(Argument("id", "ID", "the job whose output to print", complete=Complete.jobs),),
    handler=main,
)
