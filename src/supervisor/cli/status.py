"""`sjob status ID`: one job, as `systemctl status` would show a unit."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from supervisor.cli import app
from supervisor.client import Client
from supervisor.protocol import parse_job_id, to_wire


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job id, as 'sjob run -d' or 'sjob list' print.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as a JSON object.")] = False,
) -> None:
    """Show a job's state, command, owner and times, and how it ended."""
    job_id = parse_job_id(job_id)  # a malformed id fails here, without bothering sjobd
    with Client() as client:
        job = client.status(job_id)
    if as_json:
        sys.stdout.write(json.dumps(to_wire(job), indent=2) + "\n")
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        sys.stdout.write(render.status(job))
