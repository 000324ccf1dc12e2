"""How a job's output and its end are laid out as journald entries.

Job output is stored byte-exact in journald as native-protocol entries written by sjob-shim inside the job's unit
(src/shim/sjob-shim.c; StandardOutput=journal is lossy: it drops blank lines, trailing blanks, CR and `<N>`
prefixes, and merges the streams). Each entry is one *record*: what one read() of a stream's pipe returned, with

    MESSAGE=<the bytes, less one final newline>  PRIORITY=6 (stdout) or 3 (stderr)  SYSLOG_IDENTIFIER=<command>
    SJOB_JOB_ID=<id>  SJOB_STREAM=stdout|stderr  SJOB_SEQ=<1, 2, ... across both streams>  [SJOB_PARTIAL=1]

The final newline is left out of MESSAGE so that `journalctl -u sjob-<id>.service` shows ordinary lines; a record
that did not end in a newline carries SJOB_PARTIAL=1. Concatenating `MESSAGE + ("" if partial else "\\n")` over a
stream's records in SJOB_SEQ order gives back exactly the bytes the job wrote.

Before the command runs, the shim's forwarder writes a `start` entry (SJOB_EVENT=start): its _PID, which the
kernel vouches for, is the only sender whose output records count for the job (see RecordFilter).

A retried job's unit runs again (systemd's Restart=), and a timer's service runs again for every run: each run is a
new *invocation* of the unit, and journald stamps every entry with it (_SYSTEMD_INVOCATION_ID, from the unit's
cgroup, which no job can change). Each invocation has a forwarder and a start entry of its own, output numbered
from 1, an eof and an exit entry; readers tell the runs apart by that stamp.

When both pipes reach end-of-file the shim writes an `eof` entry (SJOB_EVENT=eof, SJOB_RECORDS=<count>) so a
reader can tell that it has every record. After the unit's processes are gone, a privileged ExecStopPost= writes
an `exit` entry with systemd's SERVICE_RESULT, EXIT_CODE and EXIT_STATUS: the job's durable result, readable even
if sjobd was down and the unit has been garbage-collected.
"""

from __future__ import annotations

import dataclasses
import enum
import signal

from supervisor.protocol import Resources

F_JOB_ID = "SJOB_JOB_ID"
F_STREAM = "SJOB_STREAM"
F_SEQ = "SJOB_SEQ"
F_PARTIAL = "SJOB_PARTIAL"
F_EVENT = "SJOB_EVENT"
F_RECORDS = "SJOB_RECORDS"
F_BYTES = "SJOB_BYTES"
F_BYTES_IN = "SJOB_BYTES_IN"
F_RESULT = "SJOB_RESULT"
F_EXIT_CODE = "SJOB_EXIT_CODE"
F_EXIT_STATUS = "SJOB_EXIT_STATUS"
F_INVOCATION = "SJOB_INVOCATION"  # the exit report's own word of its run: exact, where journald's stamp may not be
# What the job used, from its cgroup (see sjob-shim.c, report()); each is present only where the kernel counts it.
F_CPU_USEC = "SJOB_CPU_USEC"
F_MEMORY_PEAK = "SJOB_MEMORY_PEAK"
F_IO_READ_BYTES = "SJOB_IO_READ_BYTES"
F_IO_WRITE_BYTES = "SJOB_IO_WRITE_BYTES"
F_TASKS_PEAK = "SJOB_TASKS_PEAK"
F_QUOTA = "SJOB_QUOTA"
F_ON_EXCEED = "SJOB_ON_EXCEED"


class Event(enum.StrEnum):
    start = "start"
    quota = "quota"
    eof = "eof"
    exit = "exit"


@dataclasses.dataclass(frozen=True, slots=True)
class StartRecord:
    """The forwarder's first entry, written before the command runs: one per run of the unit (invocation)."""

    attempt: int = 0  # which run of the unit it starts, 1 first; counted by the reader of a job's records
    invocation: str = ""  # journald's _SYSTEMD_INVOCATION_ID; filled in by the reader
    when_usec: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class OutputRecord:
    seq: int
    stream: str  # "stdout" or "stderr"
    data: bytes  # exactly what the job wrote, newline included
    when_usec: int = 0  # when journald received it (realtime); filled in by the reader


@dataclasses.dataclass(frozen=True, slots=True)
class EofRecord:
    records: int  # how many output records came before this one
    bytes: int | None = None  # what the job wrote on stdout and stderr together (quota or not); older shims: None
    bytes_in: int | None = None  # what its stdin brought, where it passed through the shim (--relay-input)


@dataclasses.dataclass(frozen=True, slots=True)
class ExitRecord:
    result: str  # systemd's SERVICE_RESULT: success, exit-code, signal, core-dump, timeout, oom-kill, ...
    exit_code: str  # exited, killed or dumped; empty if the main process never ran
    exit_status: int | None  # the exit status, or the signal number when killed or dumped
    when_usec: int = 0  # when journald received the record (realtime); filled in by the reader
    resources: Resources | None = None
    # Which run of the unit ended: the report's own SJOB_INVOCATION (root's, from the unit's ExecStopPost, as every
    # exit record the readers accept); the reader fills in journald's _SYSTEMD_INVOCATION_ID where it is missing.
    invocation: str = ""

    @property
    def signal(self) -> int | None:
        return self.exit_status if self.exit_code in ("killed", "dumped") else None

    @property
    def status(self) -> int | None:
        return self.exit_status if self.exit_code == "exited" else None


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaRecord:
    """The forwarder's word that the job's output reached the policy's quota ([output]) and what it did then."""

    max_bytes: int
    on_exceed: str  # "stop" or "drop"


Record = StartRecord | OutputRecord | QuotaRecord | EofRecord | ExitRecord


@dataclasses.dataclass(frozen=True, slots=True)
class UnitEvent:
    """A run of some unit began or ended: its start record (from the unit's processes, as `uid`) or its exit
    record (from root's ExecStopPost in the unit). How sjobd sees a timer's runs."""

    unit: str
    uid: int
    record: StartRecord | ExitRecord


def parse_record(fields: dict[str, bytes]) -> Record | None:
    """The record an entry holds, or None if it is not one of ours or is malformed.

    The job's own processes can write entries too, so nothing here may raise on odd input.
    """
    event = fields.get(F_EVENT)
    if event is not None:
        if event == b"start":
            return StartRecord()
        if event == b"quota":
            quota = _int(fields.get(F_QUOTA))
            action = fields.get(F_ON_EXCEED)
            return QuotaRecord(quota, action.decode()) if quota is not None and action in (b"stop", b"drop") else None
        if event == b"eof":
            records = _int(fields.get(F_RECORDS))
            if records is None:
                return None
            return EofRecord(records, _int(fields.get(F_BYTES)), _int(fields.get(F_BYTES_IN)))
        if event == b"exit":
            return _exit_record(fields)
        return None
    stream = fields.get(F_STREAM)
    seq = _int(fields.get(F_SEQ))
    message = fields.get("MESSAGE")
    if stream not in (b"stdout", b"stderr") or seq is None or message is None:
        return None
    data = message if fields.get(F_PARTIAL) == b"1" else message + b"\n"
    return OutputRecord(seq, stream.decode(), data)


@dataclasses.dataclass(slots=True)
class RecordFilter:
    """Which journal entries may speak for one job. Anyone can write SJOB_* fields; only the kernel-vouched
    _SYSTEMD_UNIT, _UID and _PID (journald takes them from the sender's socket credentials and cgroup) decide.

    - Every record must come from the job's own unit: a process of the owner outside it (a shell, another job)
      cannot add output or end the job. (journald attributes a sender's unit only while the sender lives; the
      shim waits for journald to have read its last entries before it exits, sjob-shim.c journal_drain.)
    - The exit record must also come from root: the unit's privileged ExecStopPost.
    - Output and eof must come from the forwarder: the pid of the start record of the same run (invocation), which
      the forwarder writes before the command runs, so nothing in that run precedes it. The job's own processes
      share the unit and the uid, but not that pid: they cannot add output, nor move the reader on with a forged
      SJOB_SEQ. A run's processes are all gone before the next run starts (KillMode=control-group), and journald
      stamps each entry with the run it came from (_SYSTEMD_INVOCATION_ID), so no run can speak for another.
    - With `invocation`, only that run counts (a timer's run: the timer's service runs again for every run).
    - Jobs started before there were start records (an older sjob) have none: their output is taken from the unit.

    Stateful: it learns each run's forwarder pid from its start record, so use one filter per reading of a job.
    """

    unit: str
    owner_uid: int | None  # None: any uid of the unit's own (a DynamicUser= unit: a function's call or build)
    invocation: str | None = None
    forwarders: dict[bytes, bytes] = dataclasses.field(default_factory=dict)  # invocation -> forwarder's pid

    def admits(self, fields: dict[str, bytes], record: Record) -> bool:
        if fields.get("_SYSTEMD_UNIT") != self.unit.encode():
            return False
        run = run_of(fields, record).encode()
        if self.invocation is not None and run != self.invocation.encode():
            return False
        uid = fields.get("_UID")
        if isinstance(record, ExitRecord):
            return uid == b"0"
        if self.owner_uid is not None and uid != str(self.owner_uid).encode():
            return False
        if isinstance(record, StartRecord):
            if run in self.forwarders:
                return False  # one forwarder per run: a second start is the job's forgery
            self.forwarders[run] = fields.get("_PID", b"")
            return True
        return not self.forwarders or self.forwarders.get(run) == fields.get("_PID")

    @property
    def runs(self) -> int:
        """How many runs (start records) it has admitted."""
        return len(self.forwarders)


# The service manager's own structured entries about a unit's end (systemd's sd-messages.h), for jobs whose exit
# record is missing: SD_MESSAGE_UNIT_PROCESS_EXIT, SD_MESSAGE_UNIT_SUCCESS, SD_MESSAGE_UNIT_FAILURE_RESULT.
MANAGER_PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"
MANAGER_UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"
MANAGER_UNIT_FAILURE = "d9b373ed55a64feb8242e02dbe79a49c"


def manager_exit(result: str, code: str, status: str, when_usec: int) -> ExitRecord | None:
    """An exit record from what the service manager logged (result, EXIT_CODE, EXIT_STATUS: "9" or "KILL")."""
    record = _exit_record({F_RESULT: result.encode(), F_EXIT_CODE: code.encode(), F_EXIT_STATUS: status.encode()})
    return dataclasses.replace(record, when_usec=when_usec) if record is not None else None


def _exit_record(fields: dict[str, bytes]) -> ExitRecord | None:
    result = fields.get(F_RESULT, b"").decode("ascii", "replace")
    if not result:
        return None
    code = fields.get(F_EXIT_CODE, b"").decode("ascii", "replace")
    raw_status = fields.get(F_EXIT_STATUS, b"").decode("ascii", "replace")
    status: int | None
    if code == "exited":
        status = _int(raw_status.encode())
    elif code in ("killed", "dumped"):
        status = signal_number(raw_status)
    else:
        status = None
    numbers = [
        _int(fields.get(f)) for f in (F_CPU_USEC, F_MEMORY_PEAK, F_IO_READ_BYTES, F_IO_WRITE_BYTES, F_TASKS_PEAK)
    ]
    resources = Resources(*numbers) if any(n is not None for n in numbers) else None
    run = fields.get(F_INVOCATION, b"")
    invocation = run.decode() if len(run) == 32 and not run.strip(b"0123456789abcdef") else ""
    return ExitRecord(result, code, status, resources=resources, invocation=invocation)


def run_of(fields: dict[str, bytes], record: Record) -> str:
    """Which run of its unit (invocation) an entry came from. An exit record says so itself (SJOB_INVOCATION, from
    systemd's $INVOCATION_ID for that ExecStopPost): it counts only from root in the unit, so it is as trusted as
    journald, and it is exact, where journald's _SYSTEMD_INVOCATION_ID is what the unit's run was when journald read
    it (systemd 252 reads /run/systemd/units/invocation:UNIT), or missing (seen on bookworm). Every other entry, and
    an exit record of an older shim: journald's stamp, which no process can forge."""
    if isinstance(record, ExitRecord) and record.invocation:
        return record.invocation
    return fields.get("_SYSTEMD_INVOCATION_ID", b"").decode("ascii", "replace")


def signal_number(name: str) -> int | None:
    """systemd reports signals by name without the SIG prefix ("TERM"); accept numbers too."""
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals["SIG" + name.removeprefix("SIG")])
    except KeyError:
        return None


def _int(raw: bytes | None) -> int | None:
    if raw is None or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)
