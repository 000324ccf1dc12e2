"""`sjob run`: start a command as a job, and by default stay attached to it like a local command would."""

import contextlib
import dataclasses
import os
import signal
import stat
import sys
from typing import TYPE_CHECKING, Annotated

from supervisor.cli.limitargs import build_limits
from supervisor.cli.output import OutputCopier
from supervisor.cli.schedargs import SchedArgs
from supervisor.cli.stdin import TerminalRelay, passed_stdin, terminal_size
from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.limitforms import OPTIONS as LIMIT_OPTIONS
from supervisor.protocol import Job, JobSpec, JobState, Schedule
from supervisor.unitfile import escape

if TYPE_CHECKING:
    import typer

EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C (128 + SIGINT)

HELP = """Run COMMAND as a transient systemd service, as you, in the current directory.

Attached (the default), output appears as it is written, and sjob exits with the job's exit status.

Ctrl-C stops the job (a second Ctrl-C kills it). The output is also kept in journald: journalctl -u sjob-ID.service

The job reads your stdin when it is a pipe or a file (cat data | sjob run ..., sjob run ... < FILE), nothing
otherwise (or with -n). With --pty it runs on a terminal of its own, attached to yours: interactive programs,
line editing, Ctrl-C and Ctrl-Z work as locally.
"""


@dataclasses.dataclass(frozen=True, slots=True)
class RunArgs:
    command: list[str]
    detach: bool = False
    setenv: list[str] = dataclasses.field(default_factory=list)
    working_directory: str | None = None
    quiet: bool = False
    profile: str | None = None
    limits: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (option, value), as given
    pty: bool = False
    no_stdin: bool = False
    sched: SchedArgs = dataclasses.field(default_factory=SchedArgs)


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    def _limit(option: str, metavar: str, text: str) -> typer.models.OptionInfo:
        info: typer.models.OptionInfo = typer.Option(option, metavar=metavar, help=text, rich_help_panel="Limits")
        return info

    def _sched(option: str) -> typer.models.OptionInfo:
        from supervisor.cli.schedargs import OPTIONS  # noqa: PLC0415

        _, metavar, text = next(row for row in OPTIONS if row[0] == option)
        info: typer.models.OptionInfo = typer.Option(
            option, metavar=metavar or None, help=text, rich_help_panel="Scheduling"
        )
        return info

    @app.command(
        help=HELP,
        context_settings={"allow_interspersed_args": False},
        no_args_is_help=True,
    )
    def run_command(
        command: Annotated[
            list[str], typer.Argument(metavar="COMMAND [ARG]...", help="What to run.", show_default=False)
        ],
        detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the job id and return at once.")] = False,
        pty: Annotated[
            bool, typer.Option("--pty", "-t", help="Give the job a terminal of its own, attached to yours.")
        ] = False,
        no_stdin: Annotated[
            bool, typer.Option("--no-stdin", "-n", help="The job reads nothing (/dev/null), even from a pipe.")
        ] = False,
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
        profile: Annotated[
            str | None,
            typer.Option(
                "--profile", "-p", metavar="NAME", help="Sandbox profile (default: strict; network: has one)."
            ),
        ] = None,
        cpu: Annotated[
            str | None, _limit("--cpu", "50%|2", "CPU time: percent of one CPU, or CPUs (CPUQuota).")
        ] = None,
        cpu_weight: Annotated[str | None, _limit("--cpu-weight", "1-10000", "Share of CPU under contention.")] = None,
        allowed_cpus: Annotated[
            str | None, _limit("--allowed-cpus", "LIST", "Run only on these CPUs (0-3,6; AllowedCPUs).")
        ] = None,
        memory: Annotated[
            str | None, _limit("--memory", "SIZE", "Memory at most (512M, 2G); over it: OOM kill.")
        ] = None,
        memory_high: Annotated[str | None, _limit("--memory-high", "SIZE", "Memory above which it is slowed.")] = None,
        memory_swap: Annotated[str | None, _limit("--memory-swap", "SIZE", "Swap at most.")] = None,
        io_weight: Annotated[str | None, _limit("--io-weight", "1-10000", "Share of IO under contention.")] = None,
        io_read_bps: Annotated[list[str] | None, _limit("--io-read-bps", "DEV=RATE", "Read bytes/s (/=10M).")] = None,
        io_write_bps: Annotated[list[str] | None, _limit("--io-write-bps", "DEV=RATE", "Write bytes/s.")] = None,
        io_read_iops: Annotated[list[str] | None, _limit("--io-read-iops", "DEV=N", "Read operations/s.")] = None,
        io_write_iops: Annotated[list[str] | None, _limit("--io-write-iops", "DEV=N", "Write operations/s.")] = None,
        tasks: Annotated[str | None, _limit("--tasks", "N", "Processes and threads at most.")] = None,
        timeout: Annotated[str | None, _limit("--timeout", "DURATION", "Stop it after this long (10m, 2h).")] = None,
        queue: Annotated[bool, _sched("--queue")] = False,
        retry: Annotated[str | None, _sched("--retry")] = None,
        retry_delay: Annotated[str | None, _sched("--retry-delay")] = None,
        retry_on: Annotated[str | None, _sched("--retry-on")] = None,
        on_calendar: Annotated[str | None, _sched("--on-calendar")] = None,
        on_active: Annotated[str | None, _sched("--on-active")] = None,
        on_unit_active: Annotated[str | None, _sched("--on-unit-active")] = None,
    ) -> None:
        given: dict[str, str | list[str] | None] = {
            "--cpu": cpu,
            "--cpu-weight": cpu_weight,
            "--allowed-cpus": allowed_cpus,
            "--memory": memory,
            "--memory-high": memory_high,
            "--memory-swap": memory_swap,
            "--io-weight": io_weight,
            "--io-read-bps": io_read_bps,
            "--io-write-bps": io_write_bps,
            "--io-read-iops": io_read_iops,
            "--io-write-iops": io_write_iops,
            "--tasks": tasks,
            "--timeout": timeout,
        }
        limits = [(option, value) for option in LIMIT_OPTIONS for value in _values(given[option])]
        sched = SchedArgs(queue, retry, retry_delay, retry_on, on_calendar, on_active, on_unit_active)
        args = RunArgs(command, detach, setenv or [], working_directory, quiet, profile, limits, pty, no_stdin, sched)
        raise typer.Exit(run(args))

    run_command.__name__ = "run"


def _values(given: str | list[str] | None) -> list[str]:
    return [] if given is None else [given] if isinstance(given, str) else given


_FLAGS = {"-d": "detach", "--detach": "detach", "-q": "quiet", "--quiet": "quiet", "-t": "pty", "--pty": "pty"}
_FLAGS |= {"-n": "no_stdin", "--no-stdin": "no_stdin"}


def parse_fast(args: list[str]) -> RunArgs | None:
    """Parse the common forms of `sjob run`'s arguments exactly as typer would, or return None to let typer do it.

    Options end at `--` or at the first argument that is not an option (typer's allow_interspersed_args=False).
    Anything this does not know for certain (help, combined short flags, unknown options) is left to typer.
    """
    flags = {"detach": False, "quiet": False, "pty": False, "no_stdin": False}
    setenv: list[str] = []
    workdir: str | None = None
    profile: str | None = None
    limits: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg in _FLAGS:
            flags[_FLAGS[arg]] = True
        elif arg in ("-E", "--setenv", "--working-directory", "-p", "--profile", *LIMIT_OPTIONS):
            if i + 1 >= len(args):
                return None
            i += 1
            if arg == "--working-directory":
                workdir = args[i]
            elif arg in ("-p", "--profile"):
                profile = args[i]
            elif arg in LIMIT_OPTIONS:
                limits.append((arg, args[i]))
            else:
                setenv.append(args[i])
        elif (option := arg.partition("=")[0]) in LIMIT_OPTIONS and "=" in arg:
            limits.append((option, arg.partition("=")[2]))
        elif arg.startswith("--profile="):
            profile = arg.partition("=")[2]
        elif arg.startswith("--setenv="):
            setenv.append(arg.partition("=")[2])
        elif arg.startswith("--working-directory="):
            workdir = arg.partition("=")[2]
        elif arg.startswith("-E") and len(arg) > 2:
            setenv.append(arg[2:])
        else:
            return None
        i += 1
    command = args[i:]
    if not command:
        return None
    # In the order typer gives them: by option, repeated ones (the IO limits) as given; a repeated scalar is
    # left to typer, where the last one wins.
    order = list(LIMIT_OPTIONS)
    limits.sort(key=lambda pair: order.index(pair[0]))
    scalars = [option for option, _ in limits if not option.startswith("--io-") or option == "--io-weight"]
    if len(scalars) != len(set(scalars)):
        return None
    return RunArgs(
        command, flags["detach"], setenv, workdir, flags["quiet"], profile, limits, flags["pty"], flags["no_stdin"]
    )


def run(args: RunArgs) -> int:
    """Start the job; detached, print its id; attached, copy its output and return its exit status."""
    if args.pty and args.detach:
        raise SjobError(
            ErrorCode.InvalidArgument,
            "--pty needs an attached job: its terminal is yours",
            hint="leave out -d; 'sjob logs -f ID' shows a detached job's output",
        )
    cwd = os.path.abspath(args.working_directory) if args.working_directory else os.getcwd()
    argv = [resolve_executable(args.command[0], cwd), *args.command[1:]]
    setenv = args.setenv
    if args.pty and not any(item.partition("=")[0] == "TERM" for item in setenv):
        setenv = [*setenv, f"TERM={os.environ.get('TERM') or 'xterm-256color'}"]  # the job's terminal is like ours
    schedule = args.sched.schedule()
    spec = JobSpec(
        argv=argv,
        cwd=cwd,
        environment=environment(setenv),
        limits=build_limits(args.limits),
        profile=args.profile,
        terminal=terminal_size() if args.pty else None,
        retry=args.sched.retry_policy(),
    )
    if schedule is not None:
        return make_timer(spec, schedule, quiet=args.quiet)
    relay = TerminalRelay() if args.pty else None
    with Client() as client, contextlib.ExitStack() as cleanup:
        if relay is not None:
            cleanup.callback(relay.close)
        # Ctrl-C while the job is being started must not leave it running unseen: hold SIGINT until we know it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            if relay is not None:
                job = client.start(spec, stdin=relay.typed_read, stdout=relay.shown_write)
                relay.close_job_ends()
            else:
                stdin = passed_stdin(detach=args.detach, no_stdin=args.no_stdin)
                if args.sched.queue:
                    refuse_input(stdin)
                    stdin = None
                job = client.start(spec, stdin=stdin, queue=True if args.sched.queue else None)
        finally:
            if args.detach:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if relay is not None:
            return on_terminal(client, job, relay)
        if args.detach:
            sys.stdout.write(job.id + "\n")
            if not args.quiet:
                sys.stderr.write(
                    f"Queued as job {job.id}, place {job.position} in your queue\n"
                    if job.state is JobState.queued
                    else f"Running as unit: {job.unit}\n"
                )
            return 0
        if job.state is JobState.queued:
            sys.stderr.write(f"sjob: job {job.id} waits in your queue (place {job.position}) for one of yours to end\n")
        copier = OutputCopier()
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            final = copier.copy(client.follow(job.id))
        except KeyboardInterrupt:
            return interrupted(job, copier)
    report_abnormal_end(final)
    return final.shell_status


def refuse_input(stdin: int | None) -> None:
    """A queued job reads nothing: refuse real input (a pipe, a file) rather than drop it."""
    if stdin is not None and not stat.S_ISCHR(os.fstat(stdin).st_mode):
        raise SjobError(
            ErrorCode.InvalidArgument,
            "--queue: a queued job reads no input, and your stdin is a pipe or a file",
            hint="add -n to give it nothing, or have the command open the file itself",
        )


def make_timer(spec: JobSpec, schedule: Schedule, *, quiet: bool) -> int:
    """Make a timer for the job: print its id, and when it runs first."""
    with Client() as client:
        timer = client.schedule(spec, schedule)
    sys.stdout.write(timer.id + "\n")
    if not quiet:
        from supervisor.cli import render  # noqa: PLC0415

        sys.stderr.write(f"Timer: {timer.unit}; next run {render.when(timer.next_usec)}\n")
    return 0


def on_terminal(client: Client, job: Job, relay: TerminalRelay) -> int:
    """Be the job's terminal until it ends; then its exit status, as for any attached job. Keys such as Ctrl-C
    are the job's terminal's; a SIGINT sent to sjob itself stops the job, as for a job without a terminal."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        relay.relay()
        final = OutputCopier().copy(client.follow(job.id, streams=[]))
    except KeyboardInterrupt:
        sys.stderr.write(f"\r\nsjob: stopping job {job.id}\r\n")
        with Client() as stopper:
            stopper.stop(job.id)
        return EXIT_INTERRUPTED
    report_abnormal_end(final)
    return final.shell_status


def interrupted(job: Job, copier: OutputCopier) -> int:
    """Ctrl-C on an attached job stops it, as it would stop a local command: SIGTERM, and SIGKILL on a second
    Ctrl-C. What the job still writes while it stops is shown; then we exit like a shell does after SIGINT."""
    sys.stderr.write(f"\nsjob: stopping job {job.id} (Ctrl-C again to kill it)\n")
    signal_name: str | None = None
    while True:
        try:
            with Client() as client:
                client.stop(job.id, signal=signal_name)
                final = copier.copy(client.follow(job.id, after_seq=copier.last_seq))
            break
        except KeyboardInterrupt:
            sys.stderr.write(f"\nsjob: killing job {job.id}\n")
            signal_name = "KILL"
    sys.stderr.write(f"sjob: job {job.id} {final.message or final.state.value}\n")
    return EXIT_INTERRUPTED


def report_abnormal_end(job: Job) -> None:
    # A plain exit status speaks for itself, as in a shell; anything else deserves a word.
    if job.state is JobState.unknown or job.signal is not None or (job.message and job.exit_status is None):
        sys.stderr.write(f"sjob: job {job.id} {escape(job.message or job.state.value, backslashes=False)}\n")


def resolve_executable(name: str, cwd: str) -> str:
    """Find the command with the caller's PATH, as systemd-run does: a typo fails here, before any unit exists."""
    if "/" in name:
        path = os.path.normpath(os.path.join(cwd, name))
        if _is_executable(path):
            return path
        reason = "is not executable" if os.path.exists(path) else "does not exist"
        raise SjobError(ErrorCode.ExecutableNotFound, f"{path} {reason}")
    found = next((c for d in os.get_exec_path() if (c := os.path.join(d or ".", name)) and _is_executable(c)), None)
    if found is None:
        raise SjobError(
            ErrorCode.ExecutableNotFound,
            f"command not found: {name}",
            hint="check the name, or give the path to the program (shell builtins need: sjob run -- sh -c '...')",
        )
    return os.path.abspath(found)


def _is_executable(path: str) -> bool:
    # What shutil.which checks, without importing shutil (and with it bz2 and lzma) on the hot path.
    return os.path.isfile(path) and os.access(path, os.X_OK)


def environment(assignments: list[str]) -> list[str] | None:
    result = []
    for item in assignments:
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
