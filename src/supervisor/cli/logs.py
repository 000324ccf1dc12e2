"""`sjob logs ID`: what a job wrote, exactly, from its journal records; -f follows it to the end."""

import dataclasses
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
        raise typer.Exit(show_logs(LogsArgs(job_id, follow, stdout, stderr, as_json)))


@dataclasses.dataclass(frozen=True, slots=True)
class LogsArgs:
    job_id: str
    follow: bool = False
    stdout: bool = False
    stderr: bool = False
    as_json: bool = False


FLAGS = {"-f": "follow", "--follow": "follow", "--stdout": "stdout", "--stderr": "stderr", "--json": "as_json"}


def parse_fast(args: list[str]) -> LogsArgs | None:
    """`sjob logs`'s arguments as typer would parse them (one ID, flags anywhere), or None for anything else
    (help, `--`, unknown or combined flags), which typer then handles. Reading a job's output is as common as
    running one, and typer costs ~90 ms of start-up natively, ~1 s in the test VM."""
    flags: dict[str, bool] = {}
    ids = []
    for arg in args:
        if arg in FLAGS:
            flags[FLAGS[arg]] = True
        elif arg.startswith("-"):
            return None
        else:
            ids.append(arg)
    return LogsArgs(ids[0], **flags) if len(ids) == 1 else None


def show_logs(args: LogsArgs) -> int:
    job_id, follow, stdout, stderr = parse_job_id(args.job_id), args.follow, args.stdout, args.stderr
    if stdout and stderr:
        raise invalid_argument("--stdout and --stderr exclude each other", hint="leave both out for both streams")
    streams = [Stream.stdout] if stdout else [Stream.stderr] if stderr else None
    copier = OutputCopier(as_json=args.as_json)
    try:
        with Client() as client:
            job = copier.copy(client.follow(job_id, wait=follow, streams=streams))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # the job goes on: logs only watches
    return job.shell_status if follow else 0
