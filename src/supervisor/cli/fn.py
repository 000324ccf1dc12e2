"""`sjob fn`: functions (issue G). Deploy Python code under a name, call it with your stdin streamed in and its
output streamed back, and look after its versions and callers.

    sjob fn deploy NAME FILE [--requirements FILE] [--allow USER|@GROUP ...] [--concurrency N] [--timeout D]
                   [--memory SIZE] [--cpu Q] [--description TEXT]
    sjob fn call NAME[@VERSION] [ARGS...]      stdin in, stdout and stderr out, the exit status passed through
    sjob fn list | show NAME | versions NAME | calls NAME | rollback NAME VERSION | rm [--force] NAME

A call is a job: `sjob status ID`, `sjob logs ID`, `systemctl status sjob-ID.service` show it. Its stdin is yours:
a pipe is handed to the call as it is; anything else (a file, a socket, your terminal) is copied into a pipe by
`sjob` (on a terminal, line by line: your terminal edits the line; Ctrl-D ends the input), since the function's
code, which runs as another user, only ever gets a pipe.
"""

import contextlib
import json
import os
import signal
import stat
import sys
import threading
from typing import TYPE_CHECKING, Annotated

from supervisor.cli.limitargs import build_limits
from supervisor.cli.output import OutputCopier
from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.fnprotocol import Function, FunctionSettings
from supervisor.protocol import Job, to_wire
from supervisor.unitfile import escape

if TYPE_CHECKING:
    import typer

EXIT_TIMED_OUT = 124  # as timeout(1) says it
EXIT_INTERRUPTED = 130


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    fn = typer.Typer(name="fn", help="Functions: Python code deployed under a name, called with your stdin.")
    app.add_typer(fn)

    @fn.command(name="deploy")
    def deploy_command(
        name: Annotated[str, typer.Argument(help="The function's name (a-z, 0-9, '-', '_').")],
        file: Annotated[str, typer.Argument(metavar="FILE", help="Its Python code; it runs as a script.")],
        requirements: Annotated[
            str | None,
            typer.Option("--requirements", "-r", metavar="FILE", help="pip requirements, installed at deploy."),
        ] = None,
        allow: Annotated[
            list[str] | None,
            typer.Option("--allow", metavar="USER|@GROUP|*", help="Who may call it (default: only you)."),
        ] = None,
        concurrency: Annotated[int | None, typer.Option(help="Calls at once (more wait, then are busy).")] = None,
        timeout: Annotated[str | None, typer.Option(metavar="DURATION", help="Each call at most (30s, 5m).")] = None,
        memory: Annotated[str | None, typer.Option(metavar="SIZE", help="Each call's memory at most.")] = None,
        cpu: Annotated[str | None, typer.Option(metavar="50%|2", help="Each call's CPU time.")] = None,
        description: Annotated[str | None, typer.Option(help="One line saying what it does.")] = None,
    ) -> None:
        """Deploy FILE as the next version of the function NAME; it is compiled (and its requirements are
        installed) first, and a failed build changes nothing."""
        limits = [(o, v) for o, v in (("--timeout", timeout), ("--memory", memory), ("--cpu", cpu)) if v is not None]
        settings = FunctionSettings(description, allow, build_limits(limits), concurrency)
        raise typer.Exit(deploy(name, file, requirements, settings))

    @fn.command(name="call", context_settings={"allow_interspersed_args": False})
    def call_command(
        reference: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="The function (and version).")],
        args: Annotated[list[str] | None, typer.Argument(metavar="[ARGS]...", help="Its arguments.")] = None,
    ) -> None:
        """Call a function: your stdin goes in, its stdout and stderr come out as it writes them, and sjob exits
        with its exit status (124 if it timed out)."""
        raise typer.Exit(call(reference, args or []))

    _register_looking(fn)


def _register_looking(fn: "typer.Typer") -> None:
    import typer  # noqa: PLC0415

    @fn.command(name="list")
    def list_command(as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
        """The functions you may call, and yours."""
        with Client() as client:
            functions = client.functions()
        if as_json:
            _json([to_wire(f) for f in functions])
        else:
            _table(["NAME", "VERSION", "OWNER", "RUNNING", "DESCRIPTION"], [_row(f) for f in functions])

    @fn.command(name="show")
    def show_command(name: str, as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
        """One function: owner, version, callers, limits."""
        with Client() as client:
            function = client.function(name)
        if as_json:
            _json(to_wire(function))
            return
        limits = {k: v for k, v in to_wire(function.limits).items() if v is not None} if function.limits else {}
        for label, value in (
            ("name", function.name),
            ("description", function.description or "-"),
            ("owner", function.owner),
            ("version", f"{function.version} (latest {function.latest})"),
            ("callers", ", ".join(function.allow) or "only its owner"),
            ("concurrency", f"{function.concurrency} ({function.running} running)"),
            ("limits", ", ".join(f"{k}={v}" for k, v in limits.items()) or "the policy's"),
        ):
            sys.stdout.write(f"{label:>12}: {escape(str(value), backslashes=False)}\n")

    @fn.command(name="versions")
    def versions_command(name: str, as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
        """A function's versions, newest first."""
        with Client() as client:
            versions = client.versions(name)
        if as_json:
            _json([to_wire(v) for v in versions])
        else:
            rows = [
                [
                    str(v.version),
                    _when(v.created_usec),
                    v.deployed_by,
                    v.sha256[:12],
                    "yes" if v.requirements else "-",
                    v.build_job,
                ]
                for v in versions
            ]
            _table(["VERSION", "DEPLOYED", "BY", "SHA256", "REQUIREMENTS", "BUILD"], rows)

    @fn.command(name="rollback")
    def rollback_command(name: str, version: int) -> None:
        """Make VERSION the one calls get (running calls keep theirs)."""
        with Client() as client:
            function = client.rollback(name, version)
        sys.stderr.write(f"{function.name}: calls now get version {function.version} (latest {function.latest})\n")

    @fn.command(name="rm")
    def remove_command(
        name: str, force: Annotated[bool, typer.Option("--force", help="Stop its running calls first.")] = False
    ) -> None:
        """Remove a function and all its versions (refused while calls run, unless --force)."""
        with Client() as client:
            client.remove_function(name, force=force)
        sys.stderr.write(f"removed {name}\n")

    @fn.command(name="calls")
    def calls_command(
        name: str,
        limit: Annotated[int, typer.Option("-n", help="At most this many, newest first.")] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
    ) -> None:
        """A function's calls: who, which version, when, how long, how it ended, bytes in and out."""
        with Client() as client:
            calls = client.function_calls(name, limit)
        if as_json:
            _json([to_wire(c) for c in calls])
            return
        rows = []
        for c in calls:
            took = f"{(c.ended_usec - c.started_usec) / 1e6:.1f}s" if c.ended_usec and c.started_usec else "-"
            ended = f"status {c.exit_status}" if c.exit_status is not None else c.result or c.state
            rows.append(
                [
                    c.job,
                    c.caller,
                    str(c.version),
                    _when(c.created_usec),
                    took,
                    ended,
                    _bytes(c.bytes_in),
                    _bytes(c.bytes_out),
                ]
            )
        _table(["JOB", "CALLER", "VERSION", "STARTED", "TOOK", "ENDED", "IN", "OUT"], rows)


def deploy(name: str, file: str, requirements_file: str | None, settings: FunctionSettings) -> int:
    code = _read(file, "the code")
    requirements = _read(requirements_file, "the requirements") if requirements_file is not None else None
    sys.stderr.write(f"sjob: building {name}{' (installing its requirements)' if requirements else ''}...\n")
    with Client() as client:
        deployed = client.deploy(name, code, requirements, settings)
    sys.stderr.write(
        f"sjob: deployed {deployed.function.name} version {deployed.version.version}"
        f" (build job {deployed.version.build_job})\n"
    )
    return 0


def call(reference: str, args: list[str]) -> int:
    relay: _TypedInput | None = None
    stdin: int | None = None
    if _readable(0):
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            stdin = 0  # a pipe goes as it is
        else:
            # A terminal (line by line, as the terminal edits it), a file or a socket: into a pipe of ours, since
            # the function's code runs as someone else and gets only a pipe.
            relay = _TypedInput()
            stdin = relay.read_end
    with Client() as client, contextlib.ExitStack() as cleanup:
        if relay is not None:
            cleanup.callback(relay.close)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            job = client.call_function(reference, args, stdin=stdin)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if relay is not None:
            relay.start()
        copier = OutputCopier()
        try:
            final = copier.copy(client.follow(job.id))
        except KeyboardInterrupt:
            sys.stderr.write(f"\nsjob: stopping call {job.id}\n")
            with Client() as stopper:
                stopper.stop(job.id)
            return EXIT_INTERRUPTED
    return status_of(final)


def status_of(job: Job) -> int:
    """The call's exit status as a shell's; 124 if it ran out of time, as timeout(1)."""
    if job.result == "timeout":
        sys.stderr.write(f"sjob: call {job.id} timed out\n")
        return EXIT_TIMED_OUT
    if job.signal is not None or (job.message and job.exit_status is None):
        sys.stderr.write(f"sjob: call {job.id} {escape(job.message or job.state.value, backslashes=False)}\n")
    return job.shell_status


class _TypedInput:
    """Our stdin copied into a pipe for the call, in a thread. On a terminal, what the user types, line by line:
    the terminal stays in its normal mode (it edits and echoes each line); Ctrl-D ends the input."""

    def __init__(self) -> None:
        self.read_end, self._write_end = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._copy, daemon=True)

    def start(self) -> None:
        os.close(self.read_end)  # sjobd has its own copy
        self.read_end = -1
        self._thread.start()

    def _copy(self) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(0, 65536):
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_end, view) :]
        with contextlib.suppress(OSError):
            os.close(self._write_end)

    def close(self) -> None:
        if self.read_end >= 0:
            os.close(self.read_end)


def _readable(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SjobError(
            ErrorCode.InvalidArgument,
            f"cannot read {what} from {path}: {getattr(e, 'strerror', None) or e}",
            hint="give a readable UTF-8 text file",
        ) from None


def _row(function: Function) -> list[str]:
    version = f"{function.version}" + ("" if function.version == function.latest else f" (of {function.latest})")
    return [function.name, version, function.owner, str(function.running), function.description or ""]


def _when(usec: int) -> str:
    import time  # noqa: PLC0415

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(usec / 1e6))


def _bytes(count: int | None) -> str:
    return "-" if count is None else str(count)


def _json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Plain columns at full width (no truncation), as `sjob list` prints when piped."""
    rows = [[escape(cell, backslashes=False) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
