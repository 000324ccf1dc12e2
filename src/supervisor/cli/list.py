"""`sjob list`: your jobs (everyone's for root), newest first."""

import json
import sys
from typing import TYPE_CHECKING, Annotated

from supervisor.client import Client
from supervisor.protocol import to_wire

if TYPE_CHECKING:
    import typer


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    @app.command(name="list")
    def list_jobs(
        as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as a JSON array.")] = False,
        running: Annotated[bool, typer.Option("--running", help="Only jobs that have not ended.")] = False,
        everyone: Annotated[bool, typer.Option("--all", help="Every user's jobs (root and sjob admins).")] = False,
    ) -> None:
        """List your jobs, newest first, with their state, age and command."""
        show(as_json, running=running, everyone=everyone)


def show(as_json: bool, *, running: bool = False, everyone: bool = False) -> None:
    with Client() as client:
        jobs = client.list_jobs(everyone=everyone, running=running)
    if as_json:
        sys.stdout.write(json.dumps([to_wire(j) for j in jobs], indent=2) + "\n")
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        render.job_table(jobs)
