"""`sjob logs ID`: what a job wrote, exactly, from its journal records; -f follows it to the end."""

from typing import TYPE_CHECKING, Annotated

from supervisor.cli.output import OutputCopier
from supervisor.client import Client
from supervisor.errors import invalid_argument
from supervisor.protocol import Stream, parse_job_id

if TYPE_CHECKING:
    import typer

EXIT_INTERRUPTED = 130


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    @app.command()
    def logs(
        job_id: Annotated[str, typer.Argument(metavar="ID", help="The job whose output to print.")],
        follow: Annotated[
            bool, typer.Option("--follow", "-f", help="Keep printing until the job ends; exit with its status.")
        ] = False,
        stdout: Annotated[bool, typer.Option("--stdout", help="Only what the job wrote to stdout.")] = False,
        stderr: Annotated[bool, typer.Option("--stderr", help="Only what the job wrote to stderr.")] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="One JSON object per record: timestamp, stream, text or base64.")
        ] = False,
    ) -> None:
        """Print a job's output, stdout to stdout and stderr to stderr, byte for byte, from its very start."""
        raise typer.Exit(show_logs(job_id, follow=follow, stdout=stdout, stderr=stderr, as_json=as_json))


def show_logs(job_id: str, *, follow: bool, stdout: bool, stderr: bool, as_json: bool) -> int:
    job_id = parse_job_id(job_id)
    if stdout and stderr:
        raise invalid_argument("--stdout and --stderr exclude each other", hint="leave both out for both streams")
    streams = [Stream.stdout] if stdout else [Stream.stderr] if stderr else None
    copier = OutputCopier(as_json=as_json)
    try:
        with Client() as client:
            job = copier.copy(client.follow(job_id, wait=follow, streams=streams))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # the job goes on: logs only watches
    return job.shell_status if follow else 0
