"""`sjob status ID`: one job, as `systemctl status` would show a unit."""

import argparse
import json
import sys

from supervisor.cli.command import Argument, Command, Complete, Option
from supervisor.client import Client
from supervisor.protocol import parse_job_id, to_wire


def main(args: argparse.Namespace) -> None:
    job_id = parse_job_id(args.id)  # a malformed id fails here, without bothering sjobd
    with Client() as client:
        job = client.status(job_id)
    if args.json:
        sys.stdout.write(json.dumps(to_wire(job), indent=2) + "\n")
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        sys.stdout.write(render.status(job))


COMMAND = Command(
    name="status",
    description="""Show job ID: its state and how it ended (exit status, signal, timeout, out of memory, stopped by
whom), its owner, command, directory and unit, when it was created, started and ended, its limits and sandbox
profile, and, once it has ended, what it used: CPU time, peak memory, IO and peak tasks.""",
    options=(Option(("--json",), "print the job as a JSON object"),),
    arguments=(Argument("id", "ID", "the job: its id, sjob-ID or sjob-ID.service", complete=Complete.jobs),),
    handler=main,
)
