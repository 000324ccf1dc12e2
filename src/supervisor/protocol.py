"""The io.sjob.Jobs Varlink interface: names, typed messages, and their JSON form.

This module is the contract between `sjob` and `sjobd`. The daemon hands these classes to asyncvarlink, which
derives the Varlink interface description (`varlinkctl introspect`) and validates requests against them; the
client, which must start fast and so never imports asyncio or asyncvarlink, converts replies with `from_wire`. They
are `@frozen` classes: dataclasses to anything that asks, which cost the CLI nothing to define.
Requests are closed: the server rejects unknown fields. Replies are open: a client ignores fields it does not
know, so a newer daemon can add fields without breaking an older client.

No `from __future__ import annotations` here: asyncvarlink reads `dataclasses.fields(...).type`, which must be a
real type, not a string.
"""

import enum
import re
import struct
import types
from collections.abc import Mapping

from supervisor.errors import ErrorCode, SjobError, invalid_argument
from supervisor.frozen import defaults as field_defaults
from supervisor.frozen import frozen, is_frozen
from supervisor.frozen import names as field_names

# Not typing's: the CLI imports this module on every call, and typing would cost it ~2 ms natively. Annotations that
# need typing are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _T = TypeVar("_T")

INTERFACE = "io.sjob.Jobs"
DEFAULT_SOCKET = "/run/sjob/io.sjob.Jobs"
UNIT_PREFIX = "sjob-"
UNIT_SUFFIX = ".service"
TIMER_SUFFIX = ".timer"

# A job id is 8 lowercase hex digits; the unit is sjob-<id>.service. Nothing else is ever turned into a unit name.
# (Patterns, compiled at first use by re: compiling at import costs every sjob call start-up time.)
_JOB_ID = r"[0-9a-f]{8}"
MAX_SIGNAL = 64
_UNIT_FORM = r"sjob-([0-9a-f]{8})(?:\.service|\.timer)?"


class Method(enum.StrEnum):
    Start = f"{INTERFACE}.Start"
    Follow = f"{INTERFACE}.Follow"
    FollowPipe = f"{INTERFACE}.FollowPipe"
    Stop = f"{INTERFACE}.Stop"
    Status = f"{INTERFACE}.Status"
    List = f"{INTERFACE}.List"
    Authenticate = f"{INTERFACE}.Authenticate"
    IssueToken = f"{INTERFACE}.IssueToken"
    ListTokens = f"{INTERFACE}.ListTokens"
    RevokeToken = f"{INTERFACE}.RevokeToken"
    Schedule = f"{INTERFACE}.Schedule"
    ListTimers = f"{INTERFACE}.ListTimers"
    RemoveTimer = f"{INTERFACE}.RemoveTimer"
    Usage = f"{INTERFACE}.Usage"


class JobState(enum.StrEnum):
    """Where a job is in its life. Member names equal values: asyncvarlink sends enum names."""

    queued = "queued"  # waiting in its owner's queue until one of their jobs ends (sjob run --queue)
    starting = "starting"
    running = "running"
    exited = "exited"  # the command exited with status 0
    failed = "failed"  # non-zero exit, killed by a signal, out of memory, timed out, or could not be started
    stopped = "stopped"  # ended because someone stopped it (sjob stop, or Ctrl-C on an attached sjob run)
    unknown = "unknown"  # the unit vanished without a recorded result (e.g. the machine rebooted)

    @property
    def finished(self) -> bool:
        return self in (JobState.exited, JobState.failed, JobState.stopped, JobState.unknown)


# The `result` of a queued job stopped before it ran (it left its queue); other results are systemd's Result=.
REMOVED_FROM_QUEUE = "removed"


class Stream(enum.StrEnum):
    stdout = "stdout"
    stderr = "stderr"


MAX_WEIGHT = 10000  # CPUWeight=, IOWeight=
MAX_TASKS = 4_194_304  # TasksMax=: the kernel's limit on pids
MAX_CPUS = 8192  # AllowedCPUs=: the kernel's largest NR_CPUS
# Stop's grace_usec, between SIGTERM and SIGKILL: by default and at most the job unit's TimeoutStopSec=, which is
# systemd's DefaultTimeoutStopSec.
MAX_GRACE_USEC = 90 * 1_000_000


@frozen
class DeviceLimit:
    """An IO limit on one block device: bytes or operations per second."""

    device: str  # the device node, e.g. /dev/vda (the client resolves a path such as / to it)
    rate: int


@frozen
class Limits:
    """Resource limits, in systemd's units. Unset fields take the policy's defaults; no field may exceed the
    policy's maximum for the caller (the daemon refuses, it does not silently clamp)."""

    cpu_percent: int | None = None  # CPUQuota=, percent of one CPU (200 = two CPUs)
    cpu_weight: int | None = None  # CPUWeight=, 1..10000
    allowed_cpus: list[int] | None = None  # AllowedCPUs=, the CPU numbers the job may run on
    memory_max: int | None = None  # MemoryMax=, bytes: above it the job is OOM-killed
    memory_high: int | None = None  # MemoryHigh=, bytes: above it the job is throttled and reclaimed
    memory_swap_max: int | None = None  # MemorySwapMax=, bytes
    io_weight: int | None = None  # IOWeight=, 1..10000
    io_read_bps: list[DeviceLimit] | None = None  # IOReadBandwidthMax=
    io_write_bps: list[DeviceLimit] | None = None  # IOWriteBandwidthMax=
    io_read_iops: list[DeviceLimit] | None = None  # IOReadIOPSMax=
    io_write_iops: list[DeviceLimit] | None = None  # IOWriteIOPSMax=
    tasks_max: int | None = None  # TasksMax=
    timeout_usec: int | None = None  # RuntimeMaxUSec=: the job is stopped and reported as timed out


class RetryOn(enum.StrEnum):
    """Which ends of an attempt start another (systemd's Restart=)."""

    failure = "failure"  # Restart=on-failure: a non-zero status, a signal, a timeout, an OOM kill; not a success
    any = "any"  # Restart=always: every end but a stop


@frozen
class Retry:
    """Run the job again when an attempt ends (sjob run --retry): at most `count` more attempts, each `delay_usec`
    after the last ended. systemd does it (Restart=), so it happens whether sjobd runs or not."""

    count: int
    delay_usec: int = 1_000_000
    on: RetryOn = RetryOn.failure


@frozen
class Attempt:
    """How one attempt of a retried job ended (its exit record)."""

    number: int  # 1 for the first run
    ended_usec: int
    result: str  # systemd's Result= of that run
    exit_status: int | None = None
    signal: int | None = None
    invocation: str = ""  # systemd's invocation id of the run (journald's _SYSTEMD_INVOCATION_ID)


@frozen
class AttemptStart:
    """In a retried job's output: where its next attempt begins."""

    attempt: int
    usec: int = 0  # when its output forwarder started (realtime, microseconds)


MAX_TERMINAL_SIZE = 0xFFFF  # rows and columns are unsigned shorts in the kernel's struct winsize


@frozen
class Terminal:
    """A pseudo-terminal for the job (`sjob run --pty`), of the caller's window size."""

    rows: int
    cols: int


@frozen
class JobSpec:
    """What to run. The daemon decides as whom, where in the cgroup tree, and under which sandbox."""

    argv: list[str]
    cwd: str
    environment: list[str] | None = None  # "NAME=VALUE" entries added to the job's environment
    limits: Limits | None = None
    profile: str | None = None  # a sandbox profile by name; None means the policy's default (strict)
    # With a terminal, the job runs on a pseudo-terminal of its own: Start's `stdin` is then a pipe of TTY_FRAME
    # frames (what the caller types, and window sizes) and its `stdout` the pipe the terminal's output goes to.
    terminal: Terminal | None = None
    retry: Retry | None = None  # run it again when it fails (systemd's Restart=)


class Input(enum.StrEnum):
    """What a job reads on its stdin."""

    pipe = "pipe"
    file = "file"
    socket = "socket"
    terminal = "terminal"  # its pseudo-terminal (sjob run --pty)


@frozen
class Resources:
    """What the job used, from its cgroup's accounting (the numbers systemd reports), read as it ended.
    A field is None where the kernel does not account for it (pids.peak needs Linux 6.12)."""

    cpu_usec: int | None = None
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    tasks_peak: int | None = None


@frozen
class Job:
    """A job as the daemon knows it: what ran, for whom, and how it ended."""

    id: str
    unit: str
    state: JobState
    uid: int
    user: str
    argv: list[str]
    cwd: str
    created_usec: int
    started_usec: int | None = None
    ended_usec: int | None = None
    # systemd's Result= of the service: success, exit-code, signal, core-dump, timeout, oom-kill, resources, ...
    result: str | None = None
    exit_status: int | None = None  # set when the main process exited on its own
    signal: int | None = None  # set when the main process was killed by a signal
    message: str | None = None  # a human explanation when the job could not start or ended abnormally
    stopped_by: str | None = None  # who asked for the stop, for a stopped job
    resources: Resources | None = None  # set once the job has ended
    limits: Limits | None = None  # the limits in force: the request's, completed by the policy's defaults
    profile: str | None = None  # the sandbox profile it runs under
    input: Input | None = None  # what it reads on its stdin; None: nothing (/dev/null)
    function: str | None = None  # for a function's call (io.sjob.Functions): the function, its version, and the
    version: int | None = None  # bytes sjobd passed it on its stdin and it wrote (stdout and stderr together)
    bytes_in: int | None = None
    bytes_out: int | None = None
    dynamic: bool = False  # runs as a user systemd made for it alone (a function's call or build), not as `uid`
    retry: Retry | None = None  # how it is retried (sjob run --retry)
    attempts: list[Attempt] | None = None  # a retried job's attempts that ended, in order
    timer: str | None = None  # for a timer's run: the timer's id (its unit is the timer's service, sjob-TIMER)
    invocation: str | None = None  # for a timer's run: systemd's invocation id of that run of the service
    token_id: str | None = None  # the id of the token whose bearer started it (what `sjob token revoke` names)
    position: int | None = None  # a queued job's place in its owner's queue, 1 first (not stored: as asked)

    @property
    def log_id(self) -> str:
        """The SJOB_JOB_ID its journal entries carry: its own id, or for a timer's run the timer's."""
        return self.timer or self.id

    @property
    def log_uid(self) -> int | None:
        """The uid its output entries in the journal carry; None: a uid systemd chose for it."""
        return None if self.dynamic else self.uid

    @property
    def shell_status(self) -> int:
        """The exit status a shell would report for this job: the code, or 128+N for signal N."""
        if self.signal is not None:
            return 128 + self.signal
        if self.exit_status is not None:
            return self.exit_status
        return 0 if self.state is JobState.exited else 1


@frozen
class JobUsage:
    """A running job and what its unit uses right now, as systemd's accounting reports it (`sjob top`). Counters
    (CPU time, IO bytes) only grow: a rate is the difference of two samples over the difference of their
    `sampled_usec`, which is CLOCK_MONOTONIC on sjobd's machine (so it also holds for a client on another host).
    A field is None where systemd does not account for it."""

    job: Job
    sampled_usec: int
    cpu_usec: int | None = None  # CPUUsageNSec, in microseconds
    memory_bytes: int | None = None  # MemoryCurrent
    tasks: int | None = None  # TasksCurrent
    io_read_bytes: int | None = None  # IOReadBytes
    io_write_bytes: int | None = None  # IOWriteBytes


@frozen
class Output:
    """A piece of what the job wrote on one stream; `data` is base64 because output is arbitrary bytes."""

    stream: Stream
    data: str
    usec: int = 0  # when journald received it (realtime, microseconds)
    seq: int = 0  # its place in the job's output, both streams counted together from 1

    @classmethod
    def of(cls, chunk: "Chunk") -> "Output":
        import base64  # noqa: PLC0415 - most sjob calls never see output as JSON; base64 costs their start-up

        return cls(chunk.stream, base64.b64encode(chunk.data).decode("ascii"), chunk.usec, chunk.seq)

    def chunk(self) -> "Chunk":
        import base64  # noqa: PLC0415

        return Chunk(self.stream, base64.b64decode(self.data, validate=True), self.usec, self.seq)


@frozen
class Chunk:
    """A piece of output as bytes: what an Output carries in base64, and a FollowPipe frame carries as it is."""

    stream: Stream
    data: bytes
    usec: int = 0
    seq: int = 0


# FollowPipe's frames: a header, then `length` bytes of output. Stream 1 is stdout, 2 stderr; 3 marks where a
# retried job's next attempt begins (no bytes; `seq` is the attempt's number).
FRAME = struct.Struct("<BIQQ")  # stream, length, seq, usec
FRAME_STREAMS = {Stream.stdout: 1, Stream.stderr: 2}
FRAME_ATTEMPT = 3
MAX_FRAME_DATA = 1 << 24


def frame(item: Chunk | AttemptStart) -> bytes:
    return b"".join(frame_parts(item))


def frame_parts(item: Chunk | AttemptStart) -> tuple[bytes, bytes]:
    """The frame's header and its bytes, to be written one after the other without copying the bytes."""
    if isinstance(item, AttemptStart):
        return FRAME.pack(FRAME_ATTEMPT, 0, item.attempt, item.usec), b""
    return FRAME.pack(FRAME_STREAMS[item.stream], len(item.data), item.seq, item.usec), item.data


def unframe(buffer: bytes | bytearray | memoryview, offset: int) -> tuple[Chunk | AttemptStart, int] | None:
    """The item framed at `offset` and the offset after it, or None if the buffer does not hold all of it yet;
    a malformed header raises ProtocolError."""
    if len(buffer) - offset < FRAME.size:
        return None
    code, length, seq, usec = FRAME.unpack_from(buffer, offset)
    if code not in (1, 2, FRAME_ATTEMPT) or length > MAX_FRAME_DATA or (code == FRAME_ATTEMPT and length):
        raise SjobError(ErrorCode.ProtocolError, f"sjobd sent a malformed output frame (stream {code}, {length} bytes)")
    start = offset + FRAME.size
    if code == FRAME_ATTEMPT:
        return AttemptStart(seq, usec), start
    if len(buffer) - start < length:
        return None
    stream = Stream.stdout if code == 1 else Stream.stderr
    return Chunk(stream, bytes(memoryview(buffer)[start : start + length]), usec, seq), start + length


# The input of a job with a terminal: frames of a 5-byte header (kind, length), then `length` bytes. Kind "d" is
# what the caller typed, passed to the terminal as it is; kind "w" is a new window size (rows, cols: two u16).
# sjob-shim reads them (src/shim/sjob-shim.c, read_tty_input); the window size must be out of band, since a job's
# input is any bytes.
TTY_FRAME = struct.Struct("<cI")
TTY_DATA = b"d"
TTY_WINSIZE = b"w"
TTY_MAX_DATA = 1 << 16
_WINSIZE = struct.Struct("<HH")


def tty_data(data: bytes) -> bytes:
    """`data` as frames of at most TTY_MAX_DATA bytes each."""
    return b"".join(
        TTY_FRAME.pack(TTY_DATA, len(piece)) + piece
        for piece in (data[i : i + TTY_MAX_DATA] for i in range(0, len(data), TTY_MAX_DATA))
    )


def tty_winsize(rows: int, cols: int) -> bytes:
    rows, cols = (min(max(n, 1), MAX_TERMINAL_SIZE) for n in (rows, cols))
    return TTY_FRAME.pack(TTY_WINSIZE, _WINSIZE.size) + _WINSIZE.pack(rows, cols)


@frozen
class TokenInfo:
    """A token sjobd issued (never the token itself, which only its issuer ever sees)."""

    id: str  # the token's jti
    subject: str
    scope: list[str]
    issued_by: str
    issued_usec: int
    expires_usec: int
    revoked_usec: int | None = None
    revoked_by: str | None = None


@frozen
class IssuedToken:
    token: str  # the JWT: give it to its bearer, who passes it in SJOB_TOKEN or SJOB_TOKEN_FILE
    info: TokenInfo


# --- timers (sjob run --on-calendar, --on-active) ----------------------------------------------------------


@frozen
class Schedule:
    """When a timer runs its job, as systemd's timer settings: at calendar times, or after a time since the timer
    started, and again after a time since each run started. At least one is set."""

    on_calendar: str | None = None  # OnCalendar=, e.g. "Mon..Fri 02:00" (systemd.time(7))
    on_active_usec: int | None = None  # OnActiveSec=: once, this long after the timer is made
    on_unit_active_usec: int | None = None  # OnUnitActiveSec=: again, this long after each run started


class TimerState(enum.StrEnum):
    active = "active"  # systemd runs it
    elapsed = "elapsed"  # it will not run again (a one-off --on-active timer that fired)
    removed = "removed"  # removed by sjob stop
    gone = "gone"  # its unit vanished otherwise (the machine rebooted: transient units do not survive it)


@frozen
class Timer:
    """A timer that runs a job's spec on a schedule: sjob-<id>.timer, and sjob-<id>.service for its runs. Each run is
    a job of its own (its `timer` is this id)."""

    id: str
    unit: str  # sjob-<id>.timer
    state: TimerState
    uid: int
    user: str
    argv: list[str]
    cwd: str
    created_usec: int
    schedule: Schedule
    limits: Limits | None = None
    profile: str | None = None
    next_usec: int | None = None  # when it runs next (realtime), as systemd says; None: not again
    last_usec: int | None = None  # when it last ran, as systemd says
    last_job: str | None = None  # the job id of its latest run
    runs: int = 0  # its runs sjob has recorded
    ended_usec: int | None = None  # when it was removed or found gone
    removed_by: str | None = None
    message: str | None = None


# --- job ids -------------------------------------------------------------------------------------------------


def parse_job_id(text: str) -> str:
    """Accept `1a2b3c4d`, `sjob-1a2b3c4d`, `sjob-1a2b3c4d.service` or `.timer`; refuse everything else."""
    if re.fullmatch(_JOB_ID, text):
        return text
    if m := re.fullmatch(_UNIT_FORM, text):
        return m.group(1)
    shown = text if len(text) <= 40 and text.isprintable() else repr(text[:40]) + "…"
    raise invalid_argument(
        f"invalid job id {shown!r}: a job id is 8 lowercase hex digits such as 1a2b3c4d",
        hint="'sjob list' shows the ids of your jobs",
    )


def unit_for(job_id: str) -> str:
    return f"{UNIT_PREFIX}{parse_job_id(job_id)}{UNIT_SUFFIX}"


def timer_unit_for(timer_id: str) -> str:
    return f"{UNIT_PREFIX}{parse_job_id(timer_id)}{TIMER_SUFFIX}"


def parse_signal(text: str) -> int:
    """Accept TERM, SIGTERM, sigterm or 15 (1 to 64); refuse everything else."""
    name = text.strip().upper()
    if name.isdigit() and 1 <= int(name) <= MAX_SIGNAL:
        return int(name)
    import signal  # noqa: PLC0415 - its enums cost every sjob call start-up; few parse a signal

    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise invalid_argument(
            f"unknown signal {text[:20]!r}", hint="give a name such as TERM, INT, HUP, USR1, KILL, or a number"
        ) from None


def signal_name(number: int) -> str:
    """SIGTERM for 15, as `systemctl status` names signals; the number itself for one this system has no name for."""
    import signal  # noqa: PLC0415

    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# --- JSON form -----------------------------------------------------------------------------------------------


def to_wire(value: "Any") -> "Any":
    """Convert the message classes, enums and containers to JSON-compatible values."""
    if is_frozen(type(value)):
        return {name: to_wire(getattr(value, name)) for name in field_names(type(value))}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


def from_wire(cls: "type[_T]", obj: object) -> "_T":
    """Build message class `cls` from a decoded JSON object, checking types and ignoring unknown keys."""
    built: _T = _convert(cls, obj, cls.__name__)
    return built


def _convert(tp: "Any", obj: object, where: str) -> "Any":
    # The fields' types are written `X | None` and `list[X]`: a types.UnionType and a types.GenericAlias.
    if isinstance(tp, types.UnionType):
        if obj is None:
            return None
        (inner,) = [a for a in tp.__args__ if a is not types.NoneType]
        return _convert(inner, obj, where)
    if isinstance(tp, types.GenericAlias) and tp.__origin__ is list:
        (item,) = tp.__args__
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(_expect(obj, list, where))]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        name = _expect(obj, str, where)
        if name not in tp.__members__:
            raise _bad(where, f"unknown value {name!r}")
        return tp.__members__[name]
    if is_frozen(tp):
        message: Any = tp  # one of the message classes of this module
        fields = _expect(obj, dict, where)
        kwargs = {}
        declared, optional = tp.__annotations__, field_defaults(tp)
        for name in field_names(tp):
            if name in fields:
                kwargs[name] = _convert(declared[name], fields[name], f"{where}.{name}")
            elif name not in optional:
                raise _bad(where, f"missing field {name!r}")
        return message(**kwargs)
    if tp is bool:
        return _expect(obj, bool, where)
    if tp is int:
        if isinstance(obj, bool):
            raise _bad(where, "expected an integer")
        return _expect(obj, int, where)
    if tp is str:
        return _expect(obj, str, where)
    raise TypeError(f"from_wire cannot convert {tp!r}")  # a bug in this module, not bad input


def _expect(obj: object, tp: "type[_T]", where: str) -> "_T":
    if not isinstance(obj, tp):
        raise _bad(where, f"expected {tp.__name__}, got {type(obj).__name__}")
    return obj


def _bad(where: str, what: str) -> SjobError:
    return SjobError(
        ErrorCode.ProtocolError,
        f"malformed reply from sjobd at {where}: {what}",
        hint="sjob and sjobd may be different versions; reinstall or restart sjobd",
    )


def error_from_wire(name: str, parameters: Mapping[str, object]) -> SjobError:
    """Turn a Varlink error reply back into the SjobError the daemon raised."""
    message = parameters.get("message")
    hint = parameters.get("hint")
    short = name.removeprefix(INTERFACE + ".").removeprefix("io.sjob.Functions.")
    if short in ErrorCode.__members__ and isinstance(message, str):
        return SjobError(ErrorCode(short), message, hint if isinstance(hint, str) else None)
    if name == "org.varlink.service.MethodNotFound":
        return SjobError(
            ErrorCode.ProtocolError,
            f"sjobd does not know the method {parameters.get('method')!r}",
            hint="sjobd is older than this client: restart it with 'systemctl restart sjobd'",
        )
    if name == "org.varlink.service.InvalidParameter":
        return invalid_argument(f"sjobd rejected the request parameter {parameters.get('parameter')!r}")
    return SjobError(ErrorCode.ProtocolError, f"sjobd answered with error {name}: {dict(parameters)}")
