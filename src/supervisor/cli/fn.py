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

import argparse
import contextlib
import json
import os
import signal
import stat
import sys
import threading

from supervisor.cli import render
from supervisor.cli.command import Argument, Command, Complete, Many, Option
from supervisor.cli.exitcodes import ExitCode, of_job
from supervisor.cli.limitargs import build_limits
from supervisor.cli.output import OutputCopier
from supervisor.client import remote_host
from supervisor.errors import ErrorCode, SjobError, invalid_argument
from supervisor.fnclient import FunctionClient
from supervisor.fnprotocol import Function, FunctionSettings
from supervisor.protocol import Job, to_wire
from supervisor.unitfile import escape


def deploy_main(args: argparse.Namespace) -> int:
    limits = [(flag, value) for flag in ("--timeout", "--memory", "--cpu") if (value := getattr(args, flag[2:]))]
    concurrency = None
    if args.concurrency is not None:
        if not args.concurrency.isdigit() or int(args.concurrency) < 1:
            raise SjobError(
                ErrorCode.InvalidArgument,
                f"--concurrency {args.concurrency!r}: not a number of calls",
                hint="give a whole number, 1 or more",
            )
        concurrency = int(args.concurrency)
    settings = FunctionSettings(args.description, args.allow or None, build_limits(limits), concurrency)
    return deploy(args.name, args.file, args.requirements, settings)


def call_main(args: argparse.Namespace) -> int:
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return call(args.reference, rest)


def list_main(args: argparse.Namespace) -> None:
    with FunctionClient() as client:
        functions = client.functions()
    if args.json:
        _json([to_wire(f) for f in functions])
    elif args.quiet:
        sys.stdout.write("".join(f"{f.name}\n" for f in functions))
    else:
        _table(["NAME", "VERSION", "OWNER", "RUNNING", "DESCRIPTION"], [_row(f) for f in functions])


def show_main(args: argparse.Namespace) -> None:
    with FunctionClient() as client:
        function = client.function(args.name)
    if args.json:
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


def versions_main(args: argparse.Namespace) -> None:
    with FunctionClient() as client:
        versions = client.versions(args.name)
    if args.json:
        _json([to_wire(v) for v in versions])
        return
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


def rollback_main(args: argparse.Namespace) -> None:
    if not args.version.isdigit():
        raise SjobError(
            ErrorCode.InvalidArgument,
            f"version {args.version!r} is not a version number",
            hint=f"'sjob fn versions {args.name}' lists them",
        )
    with FunctionClient() as client:
        function = client.rollback(args.name, int(args.version))
    sys.stderr.write(f"{function.name}: calls now get version {function.version} (latest {function.latest})\n")


def remove_main(args: argparse.Namespace) -> None:
    with FunctionClient() as client:
        client.remove_function(args.name, force=args.force)
    sys.stderr.write(f"removed {args.name}\n")


def calls_main(args: argparse.Namespace) -> None:
    count = args.n or "20"
    if not count.isdigit():
        raise SjobError(ErrorCode.InvalidArgument, f"-n {count!r}: not a number", hint="give a whole number")
    with FunctionClient() as client:
        calls = client.function_calls(args.name, int(count))
    if args.json:
        _json([to_wire(c) for c in calls])
        return
    rows = []
    for c in calls:
        took = f"{(c.ended_usec - c.started_usec) / 1e6:.1f}s" if c.ended_usec and c.started_usec else "-"
        ended = f"status {c.exit_status}" if c.exit_status is not None else c.result or c.state
        row = [c.job, c.caller, str(c.version), _when(c.created_usec), took, ended, _bytes(c.bytes_in)]
        rows.append([*row, _bytes(c.bytes_out)])
    _table(["JOB", "CALLER", "VERSION", "STARTED", "TOOK", "ENDED", "IN", "OUT"], rows)


JSON = Option(("--json",), "print what sjobd answered as JSON")
NAME = Argument("name", "NAME", "the function's name", complete=Complete.functions)
COMMAND = Command(
    name="fn",
    description="""Functions: Python code deployed under a name, that others call with their stdin streamed in and
its output streamed back. A call is a job (sjob status ID, sjob logs ID, systemctl status sjob-ID.service), run as a
user of its own (DynamicUser), sandboxed, without network; the caller's name is in $SJOB_CALLER. Deploying needs
the deploy action (shipped policy: members of the group sjob-fn).""",
    subcommands=(
        Command(
            name="deploy",
            summary="deploy FILE as the next version of function NAME (built and checked first)",
            description="""Deploy FILE as the next version of the function NAME. It is compiled (and its requirements
are installed, in a build job that may use the network) first; a build that fails changes nothing and sjob exits 65.
Each deploy makes a new immutable version; the settings given here apply to the function from now on.""",
            options=(
                Option(
                    ("-r", "--requirements"),
                    "pip requirements, installed at deploy time into this version's own environment",
                    metavar="FILE",
                    complete=Complete.files,
                ),
                Option(
                    ("--allow",),
                    "who may call it: a user, @group or * (default: only you); repeatable",
                    metavar="USER|@GROUP|*",
                    repeat=True,
                ),
                Option(("--concurrency",), "calls at once; more wait briefly, then are refused as busy", metavar="N"),
                Option(
                    ("--timeout",),
                    "each call at most this long (30s, 5min); then it fails with 124",
                    metavar="DURATION",
                ),
                Option(("--memory",), "each call's memory at most (512M, 2G)", metavar="SIZE"),
                Option(("--cpu",), "each call's CPU time: percent of one CPU, or CPUs", metavar="50%|2"),
                Option(("--description",), "one line saying what it does", metavar="TEXT"),
            ),
            arguments=(NAME, Argument("file", "FILE", "its Python code; it runs as a script", complete=Complete.files)),
            handler=deploy_main,
        ),
        Command(
            name="call",
            summary="call a function: your stdin in, its output out, its exit status",
            description="""Call a function (a given VERSION, or the current one): your stdin goes in, its stdout and
stderr come out as it writes them, and sjob exits with its exit status (124 if it ran over its timeout, 75 if it is
busy, 66 if there is no such function you may call). On a terminal your input goes line by line (your terminal edits
each line; Ctrl-D ends it); the function never gets a terminal.""",
            arguments=(
                Argument(
                    "reference", "NAME[@VERSION]", "the function, and a version of it", complete=Complete.functions
                ),
                Argument("args", "ARG...", "its arguments (sys.argv[1:])", Many.rest),
            ),
            handler=call_main,
        ),
        Command(
            name="list",
            summary="the functions you may call, and yours",
            description="List the functions you may call and those you deployed: name, version, owner, running calls.",
            options=(Option(("-q", "--quiet"), "only their names, one per line"), JSON),
            handler=list_main,
        ),
        Command(
            name="show",
            summary="one function: owner, version, callers, limits",
            description="Show one function: description, owner, current and latest version, callers, limits.",
            options=(JSON,),
            arguments=(NAME,),
            handler=show_main,
        ),
        Command(
            name="versions",
            summary="a function's versions, newest first",
            description="List a function's versions, newest first: when, by whom, the code's hash, its build job.",
            options=(JSON,),
            arguments=(NAME,),
            handler=versions_main,
        ),
        Command(
            name="rollback",
            summary="make VERSION the one calls get (running calls keep theirs)",
            description="Make VERSION the one the next calls get; calls already running finish on theirs.",
            arguments=(NAME, Argument("version", "VERSION", "a version number, as 'sjob fn versions' lists them")),
            handler=rollback_main,
        ),
        Command(
            name="rm",
            summary="remove a function and all its versions",
            description="Remove a function and all its versions; refused while calls run, unless --force stops them.",
            options=(Option(("--force",), "stop its running calls first"),),
            arguments=(NAME,),
            handler=remove_main,
        ),
        Command(
            name="calls",
            summary="a function's calls: caller, version, start, duration, exit, bytes in and out",
            description="""List a function's calls, newest first: the job, caller, version, start, duration, how it
ended, and the bytes that went in and came out. Each call's output is its job's: sjob logs JOB.""",
            options=(Option(("-n",), "at most this many (default 20)", metavar="N"), JSON),
            arguments=(NAME,),
            handler=calls_main,
        ),
    ),
)


def deploy(name: str, file: str, requirements_file: str | None, settings: FunctionSettings) -> int:
    code = _read(file, "the code")
    requirements = _read(requirements_file, "the requirements") if requirements_file is not None else None
    sys.stderr.write(f"sjob: building {name}{' (installing its requirements)' if requirements else ''}...\n")
    with FunctionClient() as client:
        deployed = client.deploy(name, code, requirements, settings)
    sys.stderr.write(
        f"sjob: deployed {deployed.function.name} version {deployed.version.version}"
        f" (build job {deployed.version.build_job})\n"
    )
    return ExitCode.OK


def call(reference: str, args: list[str]) -> int:
    relay: _TypedInput | None = None
    stdin: int | None = None
    if (host := remote_host()) is not None:
        # No descriptor crosses ssh (sjob -H): the call reads nothing; refuse input that would be lost.
        if _readable(0) and not stat.S_ISCHR(os.fstat(0).st_mode):
            raise invalid_argument(
                f"your stdin is a pipe or a file, which cannot reach a call on {host} over ssh",
                hint="with -H a call reads nothing: run it with stdin from a terminal or < /dev/null",
            )
    elif _readable(0):
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            stdin = 0  # a pipe goes as it is
        else:
            # A terminal (line by line, as the terminal edits it), a file or a socket: into a pipe of ours, since
            # the function's code runs as someone else and gets only a pipe.
            relay = _TypedInput()
            stdin = relay.read_end
    with FunctionClient() as client, contextlib.ExitStack() as cleanup:
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
            final = copier.copy(client.follow_batches(job.id))
        except KeyboardInterrupt:
            sys.stderr.write(f"\nsjob: stopping call {job.id}\n")
            with FunctionClient() as stopper:
                stopper.stop(job.id)
            return ExitCode.INTERRUPTED
    return status_of(final)


def status_of(job: Job) -> int:
    """The call's exit status as a shell's; 124 if it ran out of time, as timeout(1)."""
    if job.result == "timeout":
        sys.stderr.write(f"sjob: call {job.id} timed out\n")
    elif job.signal is not None or (job.message and job.exit_status is None):
        sys.stderr.write(f"sjob: call {job.id} {escape(job.message or job.state.value, backslashes=False)}\n")
    return of_job(job)


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
    render.table(header, rows, sys.stdout)
