"""`sjob timers`: your timers (everyone's with --all, for admins), with their next and last run. `sjob run
--on-calendar/--on-active` makes one; `sjob stop ID` removes one."""

import argparse
import json
import sys

from supervisor.cli.command import Command, Option
from supervisor.client import Client
from supervisor.protocol import to_wire


def main(args: argparse.Namespace) -> None:
    with Client() as client:
        found = client.timers(everyone=args.all)
    if args.json:
        sys.stdout.write(json.dumps([to_wire(t) for t in found], indent=2) + "\n")
    elif args.quiet:
        sys.stdout.write("".join(timer.id + "\n" for timer in found))
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        render.timer_table(found, sys.stdout)


COMMAND = Command(
    name="timers",
    description="""List your timers, newest first: id, state, when each runs next and ran last, its runs (each a job
of its own, in 'sjob list' with its own id, output and record), schedule and command. 'sjob run --on-calendar SPEC',
'--on-active DURATION' or '--on-unit-active DURATION' makes a timer (a transient sjob-ID.timer with its
sjob-ID.service, as systemd-run --on-calendar makes); 'sjob stop ID' removes one. Removed and ended timers stay
listed, as ended jobs do.""",
    options=(
        Option(("--all",), "every user's timers (root and sjob admins)"),
        Option(("-q", "--quiet"), "only the timer ids, one per line"),
        Option(("--json",), "print the timers as a JSON array"),
    ),
    handler=main,
)
