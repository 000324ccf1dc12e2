"""sjob's exit statuses: one table, read by the CLI, `sjob --help`, the man page and README (like pip's
status_codes.py).

The numbers follow sysexits.h where one fits, timeout(1) for "timed out" and the shell for 127 and 130. `run`,
`wait` and `logs -f` exit with the *job's* status, which may be any of these numbers too: sjob's own failures always
say so on stderr (`sjob: ...`), and `--json` prints the job only when there is one.
"""

from __future__ import annotations

import enum

from supervisor.errors import ErrorCode

TYPE_CHECKING = False  # not typing's: `sjob --help` starts faster without importing typing
if TYPE_CHECKING:
    from supervisor.protocol import Job


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    BUILD_FAILED = 65  # EX_DATAERR
    NOT_FOUND = 66  # EX_NOINPUT
    UNAVAILABLE = 69  # EX_UNAVAILABLE
    BUSY = 75  # EX_TEMPFAIL
    PROTOCOL = 76  # EX_PROTOCOL
    DENIED = 77  # EX_NOPERM
    TIMED_OUT = 124  # timeout(1)
    NOT_EXECUTABLE = 127  # the shell's "command not found"
    INTERRUPTED = 130  # the shell's 128 + SIGINT
    BROKEN_PIPE = 141  # the shell's 128 + SIGPIPE


MEANINGS = {
    ExitCode.OK: "success (run, wait, logs -f: the job exited with status 0)",
    ExitCode.FAILURE: "sjob failed for another reason: systemd could not start the unit, sjobd's records are "
    "unwritable, an internal error",
    ExitCode.USAGE: "a bad command line: unknown option, missing argument, a value that is not accepted",
    ExitCode.BUILD_FAILED: "fn deploy: the code does not compile, or its requirements do not install; nothing was "
    "deployed",
    ExitCode.NOT_FOUND: "no such job, timer or function (someone else's job or timer, or a function you may not call, "
    "is reported the same way)",
    ExitCode.UNAVAILABLE: "sjobd cannot be reached: not installed, its socket not enabled, or it went away",
    ExitCode.BUSY: "too many jobs (run --queue waits instead), a full queue, too many timers or connections, a full "
    "disk, or a function at its concurrency cap; try again later",
    ExitCode.PROTOCOL: "sjobd answered something this sjob does not understand (different versions?)",
    ExitCode.DENIED: "policy does not allow it (an action, a profile, a limit above your ceiling)",
    ExitCode.TIMED_OUT: "the job ran over its --timeout and was stopped, as with timeout(1); or wait --timeout ran out",
    ExitCode.NOT_EXECUTABLE: "run: the command was not found or is not executable; no job was started",
    ExitCode.INTERRUPTED: "interrupted by Ctrl-C (run stops the job first)",
    ExitCode.BROKEN_PIPE: "whoever read sjob's output went away (sjob logs ID | head), as for a program killed by "
    "SIGPIPE",
}
JOB_STATUS = (
    "run, wait and logs -f exit with the job's own status: its exit status (0-255), 128+N when signal N killed it, "
    "124 when it ran over its --timeout. Only sjob's own failures print 'sjob: ...' on stderr; with --json "
    "(run -d, wait, status, stop) the job's state, exit_status and signal are on stdout"
)

FOR_ERROR = {
    ErrorCode.NoSuchJob: ExitCode.NOT_FOUND,
    ErrorCode.InvalidArgument: ExitCode.USAGE,
    ErrorCode.RequestTooLarge: ExitCode.USAGE,
    ErrorCode.PermissionDenied: ExitCode.DENIED,
    ErrorCode.StartFailed: ExitCode.FAILURE,
    ErrorCode.SystemdError: ExitCode.FAILURE,
    ErrorCode.InternalError: ExitCode.FAILURE,
    ErrorCode.TooManyJobs: ExitCode.BUSY,
    ErrorCode.TooManyConnections: ExitCode.BUSY,
    ErrorCode.StorageError: ExitCode.BUSY,
    ErrorCode.RequestTimeout: ExitCode.TIMED_OUT,
    ErrorCode.NotConnected: ExitCode.UNAVAILABLE,
    ErrorCode.ProtocolError: ExitCode.PROTOCOL,
    ErrorCode.ExecutableNotFound: ExitCode.NOT_EXECUTABLE,
    ErrorCode.NoSuchFunction: ExitCode.NOT_FOUND,
    ErrorCode.Busy: ExitCode.BUSY,
    ErrorCode.BuildFailed: ExitCode.BUILD_FAILED,
}


def for_error(code: ErrorCode) -> ExitCode:
    return FOR_ERROR.get(code, ExitCode.FAILURE)


def of_job(job: Job) -> int:
    """The status run, wait and logs -f exit with: the job's, as a shell reports a command's, and 124 for a job
    stopped because it ran over its --timeout (systemd's result "timeout"; a stop that timed out is "stopped")."""
    if job.result == "timeout" and job.state == "failed":
        return ExitCode.TIMED_OUT
    return job.shell_status
