"""`sjob list`: your jobs (everyone's for root and admins), newest first."""

import argparse
import json
import sys

from supervisor.cli.command import Command, Option
from supervisor.client import Client
from supervisor.protocol import to_wire
from supervisor.quantities import parse_integer


def main(args: argparse.Namespace) -> None:
    count = parse_integer(args.lines, "-n", 1, 2**31) if args.lines is not None else None
    with Client() as client:
        jobs = client.list_jobs(everyone=args.all, running=args.running)
    jobs = jobs[:count]
    if args.json:
        sys.stdout.write(json.dumps([to_wire(j) for j in jobs], indent=2) + "\n")
    elif args.quiet:
        sys.stdout.write("".join(job.id + "\n" for job in jobs))
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        render.job_table(jobs, sys.stdout)


COMMAND = Command(
    name="list",
    description="""List your jobs, newest first: id, state and how it ended, age, owner and command. On a terminal the
table fits its width; piped, it is plain columns at full width, one line per job.""",
    options=(
        Option(("--running",), "only jobs that have not ended"),
        Option(("--all",), "every user's jobs (root and sjob admins)"),
        Option(("-n", "--lines"), "only the newest N jobs", metavar="N"),
        Option(("-q", "--quiet"), "only the job ids, one per line"),
        Option(("--json",), "print the jobs as a JSON array"),
    ),
    handler=main,
)
