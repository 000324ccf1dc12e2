"""`sjob list`: your jobs (everyone's for root), newest first."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from supervisor.cli import app
from supervisor.client import Client
from supervisor.protocol import to_wire


@app.command(name="list")
def list_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as a JSON array.")] = False,
) -> None:
    """List jobs with their state, age and command."""
    with Client() as client:
        jobs = client.list_jobs()
    if as_json:
        sys.stdout.write(json.dumps([to_wire(j) for j in jobs], indent=2) + "\n")
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        render.job_table(jobs)
