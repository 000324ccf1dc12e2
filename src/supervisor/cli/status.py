"""`sjob status ID`: one job, as `systemctl status` would show a unit."""

import json
import sys
from typing import TYPE_CHECKING, Annotated

from supervisor.client import Client
from supervisor.protocol import parse_job_id, to_wire

if TYPE_CHECKING:
    import typer


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    @app.command()
    def status(
        job_id: Annotated[str, typer.Argument(metavar="ID", help="The job id, as 'sjob run -d' or 'sjob list' print.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the job as a JSON object.")] = False,
    ) -> None:
        """Show a job's state, command, owner and times, and how it ended."""
        show(job_id, as_json)


def show(job_id: str, as_json: bool) -> None:
    job_id = parse_job_id(job_id)  # a malformed id fails here, without bothering sjobd
    with Client() as client:
        job = client.status(job_id)
    if as_json:
        sys.stdout.write(json.dumps(to_wire(job), indent=2) + "\n")
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        sys.stdout.write(render.status(job))
