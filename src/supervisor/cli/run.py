"""`sjob run`: start a command as a job, and by default stay attached to it like a local command would."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Annotated

import typer

from supervisor.cli import app
from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import Job, JobSpec, JobState, Output, Stream


@app.command(
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    no_args_is_help=True,
)
def run(
    command: Annotated[list[str], typer.Argument(metavar="COMMAND [ARG]...", help="What to run.", show_default=False)],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the job id and return at once.")] = False,
    setenv: Annotated[
        list[str] | None,
        typer.Option(
            "--setenv",
            "-E",
            metavar="NAME[=VALUE]",
            help="Set an environment variable for the job; NAME alone copies it from yours.",
        ),
    ] = None,
    working_directory: Annotated[
        str | None,
        typer.Option("--working-directory", metavar="DIR", help="Run in DIR instead of the current directory."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="With --detach, print only the job id.")] = False,
) -> None:
    """Run COMMAND as a transient systemd service, as you, in the current directory.

    Attached (the default), output appears as it is written, and sjob exits with the job's exit status.

    The output is also kept in journald: journalctl -u sjob-ID.service
    """
    cwd = os.path.abspath(working_directory) if working_directory else os.getcwd()
    spec = JobSpec(argv=[resolve_executable(command[0], cwd), *command[1:]], cwd=cwd, environment=environment(setenv))
    with Client() as client:
        job = client.start(spec)
        if detach:
            sys.stdout.write(job.id + "\n")
            if not quiet:
                sys.stderr.write(f"Running as unit: {job.unit}\n")
            return
        try:
            final = attach(client, job)
        except KeyboardInterrupt:
            sys.stderr.write(f"\nsjob: detached; job {job.id} keeps running ('sjob status {job.id}')\n")
            raise typer.Exit(130) from None
    report_abnormal_end(final)
    raise typer.Exit(final.shell_status)


def attach(client: Client, job: Job) -> Job:
    """Copy the job's output to ours as it arrives; return the finished job."""
    sinks = {Stream.stdout: sys.stdout.buffer, Stream.stderr: sys.stderr.buffer}
    final = job
    for item in client.follow(job.id):
        if isinstance(item, Output):
            sink = sinks[item.stream]
            sink.write(item.raw())
            sink.flush()
        else:
            final = item
    return final


def report_abnormal_end(job: Job) -> None:
    # A plain exit status speaks for itself, as in a shell; anything else deserves a word.
    if job.state is JobState.unknown or job.signal is not None or (job.message and job.exit_status is None):
        sys.stderr.write(f"sjob: job {job.id} {job.message or job.state.value}\n")


def resolve_executable(name: str, cwd: str) -> str:
    """Find the command with the caller's PATH, as systemd-run does: a typo fails here, before any unit exists."""
    if "/" in name:
        path = os.path.normpath(os.path.join(cwd, name))
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        reason = "is not executable" if os.path.exists(path) else "does not exist"
        raise SjobError(ErrorCode.ExecutableNotFound, f"{path} {reason}")
    found = shutil.which(name)
    if found is None:
        raise SjobError(
            ErrorCode.ExecutableNotFound,
            f"command not found: {name}",
            hint="check the name, or give the path to the program (shell builtins need: sjob run -- sh -c '...')",
        )
    return os.path.abspath(found)


def environment(assignments: list[str] | None) -> list[str] | None:
    result = []
    for item in assignments or []:
        if "=" in item:
            result.append(item)
        elif item in os.environ:
            result.append(f"{item}={os.environ[item]}")
        else:
            raise SjobError(
                ErrorCode.InvalidArgument,
                f"--setenv {item}: no such variable in your environment",
                hint="write --setenv NAME=VALUE to give the value",
            )
    return result or None
