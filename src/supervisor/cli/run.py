"""`sjob run`: start a command as a job, and by default stay attached to it like a local command would."""

import argparse
import contextlib
import json
import os
import signal
import stat
import sys

from supervisor import limitforms
from supervisor.cli import schedargs
from supervisor.cli.command import Argument, Command, Complete, Many, Option
from supervisor.cli.exitcodes import ExitCode, of_job
from supervisor.cli.limitargs import build_limits
from supervisor.cli.output import OutputCopier
from supervisor.cli.stdin import TerminalRelay, passed_stdin, terminal_size
from supervisor.client import Client, remote_host
from supervisor.errors import ErrorCode, SjobError, invalid_argument
from supervisor.protocol import Job, JobSpec, JobState, Retry, Schedule, to_wire
from supervisor.unitfile import escape

LIMITS = tuple(
    Option((limit.option,), limit.help, metavar=limit.metavar, repeat=limit.per_device, group="limits")
    for limit in limitforms.TABLE
)


def main(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise invalid_argument(
            "no command to run", hint="give it after the options: sjob run [OPTIONS] -- COMMAND [ARG]..."
        )
    limits = [(option.flags[0], value) for option in LIMITS for value in _values(getattr(args, option.name))]
    return run(
        command,
        detach=args.detach,
        quiet=args.quiet,
        as_json=args.json,
        setenv=args.setenv,
        working_directory=args.working_directory,
        profile=args.profile,
        limits=limits,
        pty=args.pty,
        no_stdin=args.no_stdin,
        queue=args.queue,
        retry=schedargs.retry_policy(args),
        schedule=schedargs.schedule(args),
    )


def _values(given: str | list[str] | None) -> list[str]:
    return [] if given is None else [given] if isinstance(given, str) else given


COMMAND = Command(
    name="run",
    description="""Start COMMAND as a transient systemd service (sjob-ID.service), as you, in your current directory,
sandboxed and limited. sjob looks COMMAND up in your PATH first, as systemd-run does: a typo fails at once and
starts nothing. The job gets systemd's environment for services plus what -E gives, not your shell's; its
arguments reach it literally.

Attached (the default), the job's output appears as it is written, stdout on stdout and stderr on stderr, and sjob
exits with the job's status (128+N when signal N killed it, 124 when it ran over its --timeout). Ctrl-C stops the
job (a second Ctrl-C kills it) and exits 130. With -d, sjob prints the job id and returns at once; 'sjob logs -f ID'
attaches later. The output is also in journald: journalctl -u sjob-ID.service

The job reads your stdin when it is a pipe or a file (cat data | sjob run ..., sjob run ... < FILE), nothing
(/dev/null) when it is your terminal, with -d or with -n. With --pty it runs on a terminal of its own, attached to
yours: interactive programs, line editing, Ctrl-C, Ctrl-Z and window size work as locally; its stdout and stderr
are then one stream, kept in journald as stdout.

Scheduling (issue J): with --queue, a job over your cap on running jobs waits in your queue (state queued, with
its place) and starts when one of yours ends, even across a restart of sjobd; it reads no input. --retry N runs a
failed job again, up to N more times, as one unit with systemd's Restart=: 'sjob status' shows each attempt and
'sjob logs' every attempt's output in order. --on-calendar, --on-active and --on-unit-active make a timer instead
of a job (sjob-ID.timer, as systemd-run --on-calendar does): sjob prints its id; each run is a job of its own;
'sjob timers' lists timers and 'sjob stop ID' removes one.""",
    options=(
        Option(("-d", "--detach"), "print the job id and return at once"),
        Option(("-q", "--quiet"), "with --detach, print only the job id"),
        Option(("-t", "--pty"), "give the job a terminal of its own, attached to yours (not with --detach)"),
        Option(("-n", "--no-stdin"), "the job reads nothing (/dev/null), even when your stdin is a pipe or a file"),
        Option(
            ("--json",),
            "with --detach, print the started job as JSON; attached, each piece of output as a "
            "JSON object, as 'sjob logs --json' does",
        ),
        Option(
            ("-E", "--setenv"),
            "set an environment variable for the job; NAME alone copies yours; repeatable",
            metavar="NAME[=VALUE]",
            repeat=True,
        ),
        Option(
            ("--working-directory",),
            "run in DIR instead of the current directory",
            metavar="DIR",
            complete=Complete.directories,
        ),
        Option(
            ("-p", "--profile"),
            "the sandbox profile (default strict, without network; network has one)",
            metavar="NAME",
            complete=Complete.profiles,
        ),
        *LIMITS,
        *schedargs.OPTIONS,
    ),
    arguments=(Argument("command", "COMMAND [ARG]...", "what to run", Many.rest, Complete.command),),
    handler=main,
)


def run(
    command: list[str],
    *,
    detach: bool = False,
    quiet: bool = False,
    as_json: bool = False,
    setenv: list[str] | None = None,
    working_directory: str | None = None,
    profile: str | None = None,
    limits: list[tuple[str, str]] | None = None,
    pty: bool = False,
    no_stdin: bool = False,
    queue: bool = False,
    retry: Retry | None = None,
    schedule: Schedule | None = None,
) -> int:
    """Start the job; detached, print its id; attached, copy its output and return its exit status. With a
    `schedule`, make a timer instead, and print its id."""
    if pty and (queue or schedule is not None):
        raise invalid_argument(
            "--pty needs an attached job that starts now: a queued job or a timer's runs have no terminal",
            hint="leave out --pty",
        )
    if pty and detach:
        raise invalid_argument(
            "--pty needs an attached job: its terminal is yours",
            hint="leave out -d; 'sjob logs -f ID' shows a detached job's output",
        )
    stdin = None if pty else passed_stdin(detach=detach, no_stdin=no_stdin)
    if (host := remote_host()) is not None:
        cwd, argv = _remote_start(host, command, working_directory, pty=pty, stdin=stdin)
    else:
        cwd = os.path.abspath(working_directory) if working_directory else os.getcwd()
        argv = [resolve_executable(command[0], cwd), *command[1:]]
    setenv = setenv or []
    if pty and not any(item.partition("=")[0] == "TERM" for item in setenv):
        setenv = [*setenv, f"TERM={os.environ.get('TERM') or 'xterm-256color'}"]  # the job's terminal is like ours
    spec = JobSpec(
        argv=argv,
        cwd=cwd,
        environment=environment(setenv),
        limits=build_limits(limits or []),
        profile=profile,
        terminal=terminal_size() if pty else None,
        retry=retry,
    )
    if schedule is not None:
        return make_timer(spec, schedule, quiet=quiet, as_json=as_json)
    relay = TerminalRelay() if pty else None
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
                if queue:
                    refuse_input(stdin)
                    stdin = None
                job = client.start(spec, stdin=stdin if client.passes_fds else None, queue=True if queue else None)
        finally:
            if detach:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if relay is not None:
            return on_terminal(client, job, relay)
        if detach:
            sys.stdout.write(json.dumps(to_wire(job), indent=2) + "\n" if as_json else job.id + "\n")
            if not quiet and not as_json:
                sys.stderr.write(
                    f"Queued as job {job.id}, place {job.position} in your queue\n"
                    if job.state is JobState.queued
                    else f"Running as unit: {job.unit}\n"
                )
            return ExitCode.OK
        if job.state is JobState.queued:
            sys.stderr.write(f"sjob: job {job.id} waits in your queue (place {job.position}) for one of yours to end\n")
        copier = OutputCopier(as_json=as_json)
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            final = copier.copy(client.follow_batches(job.id))
        except KeyboardInterrupt:
            return interrupted(job, copier)
    report_abnormal_end(final)
    return of_job(final)


def refuse_input(stdin: int | None) -> None:
    """A queued job reads nothing: refuse real input (a pipe, a file) rather than drop it. A descriptor cannot wait
    in a queue on disk, and a queue that kept it open in sjobd would not survive sjobd's restart."""
    if stdin is not None and not stat.S_ISCHR(os.fstat(stdin).st_mode):
        raise invalid_argument(
            "--queue: a queued job reads no input, and your stdin is a pipe or a file",
            hint="add -n to give it nothing, or have the command open the file itself",
        )


def make_timer(spec: JobSpec, schedule: Schedule, *, quiet: bool, as_json: bool) -> int:
    """Make a timer for the job: print its id, and when it runs first."""
    with Client() as client:
        timer = client.schedule(spec, schedule)
    if as_json:
        sys.stdout.write(json.dumps(to_wire(timer), indent=2) + "\n")
        return ExitCode.OK
    sys.stdout.write(timer.id + "\n")
    if not quiet:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        sys.stderr.write(f"Timer: {timer.unit}; next run {render.when(timer.next_usec)}\n")
    return ExitCode.OK


def _remote_start(
    host: str, command: list[str], working_directory: str | None, *, pty: bool, stdin: int | None
) -> tuple[str, list[str]]:
    """The directory and command line of a job on `host` (sjob -H). Neither our PATH nor our directory is the
    remote machine's: the command is looked up in the PATH of the job's unit there, and the job runs in / unless
    told otherwise. No descriptor crosses ssh, so a job there can have neither a terminal nor our stdin."""
    if pty:
        raise invalid_argument(
            f"--pty cannot work with -H: a terminal would have to cross ssh as a file descriptor ({host})",
            hint=f"ssh -t {host} sjob run --pty ... runs it there",
        )
    if stdin is not None and not stat.S_ISCHR(os.fstat(stdin).st_mode):  # /dev/null: nothing to lose
        raise invalid_argument(
            f"your stdin is a pipe or a file, which cannot reach a job on {host} over ssh",
            hint="give -n for the job to read nothing, or copy the data there first",
        )
    if working_directory is not None and not working_directory.startswith("/"):
        raise invalid_argument("--working-directory must be an absolute path with -H: it names a directory there")
    return working_directory or "/", list(command)


def on_terminal(client: Client, job: Job, relay: TerminalRelay) -> int:
    """Be the job's terminal until it ends; then its exit status, as for any attached job. Keys such as Ctrl-C
    are the job's terminal's; a SIGINT sent to sjob itself stops the job, as for a job without a terminal."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        relay.relay()
        final = OutputCopier().copy(client.follow_batches(job.id, streams=[]))
    except KeyboardInterrupt:
        sys.stderr.write(f"\r\nsjob: stopping job {job.id}\r\n")
        with Client() as stopper:
            stopper.stop(job.id)
        return ExitCode.INTERRUPTED
    report_abnormal_end(final)
    return of_job(final)


def interrupted(job: Job, copier: OutputCopier) -> int:
    """Ctrl-C on an attached job stops it, as it would stop a local command: SIGTERM, and SIGKILL on a second
    Ctrl-C. What the job still writes while it stops is shown; then we exit like a shell does after SIGINT."""
    sys.stderr.write(f"\nsjob: stopping job {job.id} (Ctrl-C again to kill it)\n")
    signal_name: str | None = None
    while True:
        try:
            with Client() as client:
                client.stop(job.id, signal=signal_name)
                final = copier.copy(client.follow_batches(job.id, after_seq=copier.last_seq))
            break
        except KeyboardInterrupt:
            sys.stderr.write(f"\nsjob: killing job {job.id}\n")
            signal_name = "KILL"
    sys.stderr.write(f"sjob: job {job.id} {escape(final.message or final.state.value, backslashes=False)}\n")
    return ExitCode.INTERRUPTED


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
