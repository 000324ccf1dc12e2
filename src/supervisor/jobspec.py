"""Validation of what a client asks to run. Pure: it looks at the request, never at the system.

Every rule here produces an `InvalidArgument` error that names the field and says what is accepted, so a bad
request fails before any unit exists.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re

from supervisor import retries, unitfile
from supervisor.errors import invalid_argument
from supervisor.protocol import MAX_TERMINAL_SIZE, JobSpec

MAX_ARGS = 4096
MAX_ARGV_BYTES = 128 * 1024
MAX_PATH = 4096
MAX_ENV = 256
MAX_ENV_BYTES = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROFILE = re.compile(r"[a-z][a-z0-9-]{0,31}")
# Refused names: the unit's Environment= also reaches its privileged ExecStopPost (the exit report, run as root),
# and these steer what a root process loads. The shim is linked statically, so none should matter; refusing
# them keeps it so should that ever change. They are glibc's "unsecure" variables (the ones it drops for setuid
# programs) and every LD_*; the job can still set them itself (sh -c 'LD_PRELOAD=... cmd').
_REFUSED_ENV = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_ARENA_MAX",
        "MALLOC_ARENA_TEST",
        "MALLOC_PERTURB_",
        "MALLOC_TRACE",
        "MALLOC_TOP_PAD_",
        "MALLOC_MMAP_MAX_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    }
)
# Names systemd itself sets for a service's processes (systemd.exec(5), "Environment Variables in Spawned
# Processes"): Environment= overrides them, and the privileged ExecStopPost reads SERVICE_RESULT, EXIT_CODE and
# EXIT_STATUS from them, so a request setting them would write the job's recorded result (issue E:
# `-E SERVICE_RESULT=success` turned a timeout into a success). Names systemd derives from User= (HOME, USER,
# PATH, ...) describe only the caller's own session and stay allowed, as with systemd-run -E. SJOB_* is sjob's.
_SYSTEMD_ENV = frozenset(
    {
        "SERVICE_RESULT",
        "EXIT_CODE",
        "EXIT_STATUS",
        "MAINPID",
        "MANAGERPID",
        "INVOCATION_ID",
        "SYSTEMD_EXEC_PID",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "PIDFILE",
        "FDSTORE",
        "LOG_NAMESPACE",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
        "MEMORY_PRESSURE_WATCH",
        "MEMORY_PRESSURE_WRITE",
    }
)
_SYSTEMD_ENV_PREFIXES = ("MONITOR_", "TRIGGER_", "SJOB_")


def validate(spec: JobSpec) -> JobSpec:
    """Return the spec with its paths normalised, or raise InvalidArgument."""
    argv = _validate_argv(spec.argv)
    cwd = _validate_cwd(spec.cwd)
    environment = _validate_environment(spec.environment or [])
    if spec.profile is not None and not _PROFILE.fullmatch(spec.profile):
        raise invalid_argument(f"unknown profile {spec.profile[:40]!r}", hint="see the profiles in /etc/sjob/profiles")
    if spec.terminal is not None and not all(
        1 <= n <= MAX_TERMINAL_SIZE for n in (spec.terminal.rows, spec.terminal.cols)
    ):
        raise invalid_argument(
            f"a terminal of {spec.terminal.rows} rows and {spec.terminal.cols} columns is out of range",
            hint=f"rows and columns are 1 to {MAX_TERMINAL_SIZE}",
        )
    retry = retries.validate(spec.retry) if spec.retry is not None else None
    return dataclasses.replace(spec, argv=argv, cwd=cwd, environment=environment or None, retry=retry)


def _validate_argv(argv: list[str]) -> list[str]:
    if not argv or not argv[0]:
        raise invalid_argument("the command is empty", hint="give the command after '--': sjob run -- CMD ARGS...")
    return validate_arguments(argv, "argument {} of the command")


def validate_arguments(argv: list[str], name: str) -> list[str]:
    """`argv` if it may be a command line (a job's, a function call's): how many, how long, no NUL, text; `name`
    says which argument is wrong ("argument {} of the command")."""
    if len(argv) > MAX_ARGS:
        raise invalid_argument(f"{len(argv)} arguments; at most {MAX_ARGS} are accepted")
    if sum(len(a.encode(errors="surrogatepass")) + 1 for a in argv) > MAX_ARGV_BYTES:
        raise invalid_argument(f"the command line is longer than {MAX_ARGV_BYTES} bytes")
    for i, arg in enumerate(argv):
        _check_text(arg, name.format(i))
        if "\0" in arg:
            raise invalid_argument(f"{name.format(i)} contains a NUL byte")
    return list(argv)


def _validate_cwd(cwd: str) -> str:
    _check_text(cwd, "the working directory")
    if not cwd.startswith("/") or "\0" in cwd or len(cwd) > MAX_PATH:
        raise invalid_argument(
            f"the working directory '{unitfile.escape(cwd[:100])}' is not an absolute path",
            hint="pass a path starting with '/'",
        )
    # normpath keeps a leading "//" (POSIX leaves its meaning open); systemd would simplify it to "/".
    cwd = "/" + posixpath.normpath(cwd).lstrip("/")
    # The working directory becomes WorkingDirectory= and ReadWritePaths= of the unit: it must read back the same.
    if (problem := unitfile.problem(cwd, unitfile.Kind.word)) is not None:
        raise invalid_argument(
            f"the working directory '{unitfile.escape(cwd[:100])}' has {problem}, which systemd cannot keep in a"
            " unit file",
            hint="run the job from a directory whose path has no control characters, backslashes or double quotes"
            " (sjob run --working-directory DIR)",
        )
    return cwd


def _validate_environment(environment: list[str]) -> list[str]:
    if len(environment) > MAX_ENV or sum(len(e.encode(errors="surrogatepass")) for e in environment) > MAX_ENV_BYTES:
        raise invalid_argument(f"too much environment: at most {MAX_ENV} entries and {MAX_ENV_BYTES} bytes")
    seen: dict[str, str] = {}
    for entry in environment:
        name, sep, value = entry.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise invalid_argument(
                f"invalid environment entry {entry[:60]!r}",
                hint="write NAME=VALUE, where NAME is letters, digits and '_' and does not start with a digit",
            )
        if name.startswith("LD_") or name in _REFUSED_ENV:
            raise invalid_argument(
                f"the environment variable {name} is refused: it steers the dynamic loader or libc",
                hint=f"set it inside the job instead: sjob run -- env {name}=... COMMAND",
            )
        if name in _SYSTEMD_ENV or name.startswith(_SYSTEMD_ENV_PREFIXES):
            raise invalid_argument(
                f"the environment variable {name} is refused: systemd or sjob sets it for the job's unit, and the"
                " job's recorded result is read from such variables",
                hint=f"use another name, or set it inside the job: sjob run -- env {name}=... COMMAND",
            )
        _check_text(value, f"the value of environment variable {name}")
        if "\0" in value:
            raise invalid_argument(f"the value of environment variable {name} contains a NUL byte")
        seen[name] = value  # the last assignment wins, as in a shell
    return [f"{name}={value}" for name, value in seen.items()]


def _check_text(text: str, what: str) -> None:
    """JSON can carry lone surrogates (\\ud800), which are no text: D-Bus, systemd and the journal need UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise invalid_argument(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
