"""The one place that reads journald, through systemd-python's sd_journal binding.

Readers are opened LOCAL_ONLY: a job running as uid 1000 has its entries in user-1000.journal when the journal is
persistent, which a SYSTEM_ONLY reader would never see. `data_threshold` is FIELD_MAX because sd_journal otherwise
hands back at most 64 KiB of a field, and an output record can be that large.

Entries are matched by SJOB_JOB_ID (an indexed field) and then vetted by `logformat.RecordFilter`: only entries
from the job's own unit count, output only from its forwarder's pid, the exit only from root.

A job's records are read one at a time and handed on as they are read, never collected: a 60 MB job must not
make sjobd hold 60 MB per reader (issue E). Every READ_BATCH records the reader lets the event loop run, so one
fast reader of a large job cannot keep sjobd from answering everyone else.

sd_journal calls do a little blocking file I/O on mmap'd files; they are short and run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path

from systemd import journal

from supervisor import logformat
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord, QuotaRecord, Record, StartRecord, UnitEvent
from supervisor.protocol import UNIT_PREFIX, UNIT_SUFFIX

R = typing.TypeVar("R", bound=Record)
log = logging.getLogger(__name__)

TICK = 2.0  # seconds between checks on a quiet job, so callers can notice a unit that vanished
# How long the exit and run watchers wait before reading again after the journal failed them (doubling up to this).
REOPEN_DELAY_MAX = 30.0
GAP_RETRIES = 12  # rereads of one gap before its records are given up on (about 10 s with GAP_DELAY doubling)
GAP_DELAY = 0.05
# A live follower polls (see job_records): every POLL_MIN after a record, backing off to POLL_MAX while the job has
# written something within QUICK_FOR, then to POLL_IDLE. A job that writes now and then is followed within ~20 ms;
# one quiet for long costs its followers a few wake-ups a second, and its next record is seen within POLL_IDLE.
# Only FAST_FOLLOWERS followers at a time poll that fast, the others back off to POLL_SLOW: users who open many
# followers of chatty jobs (up to 32 connections each) cannot multiply sjobd's wake-ups (review of H).
POLL_MIN = 0.005  # seconds
POLL_MAX = 0.02
POLL_SLOW = 0.1
QUICK_FOR = 3.0
POLL_IDLE = 0.25
FAST_FOLLOWERS = 16
READ_BATCH = 64  # entries examined (records up to 64 KiB each) between turns given to the event loop
# The largest field read whole: an output record's MESSAGE is at most one 64 KiB read (sjob-shim.c READ_SIZE).
# Beyond it sd_journal truncates, so an entry someone planted with a huge field costs no more than that.
FIELD_MAX = 128 * 1024


async def _changed_within(changed: asyncio.Event, timeout: float | None) -> None:
    """Wait until `changed` is set or `timeout` seconds have passed (None: until it is set).

    Not asyncio.wait_for: on Python 3.11 (bookworm) it returns normally when it is cancelled in the same turn of
    the loop as the event is set, and the cancellation is lost. sjobd logs "shutting down" just before it cancels
    the exit watcher, which wakes this very event: the watcher went on, and sjobd hung until systemd killed it
    90 s later (seen in the bookworm VM). asyncio.wait never swallows a cancellation."""
    waiter = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


def _timeout(reader: journal.Reader) -> float | None:
    """How long `reader` may wait for its inotify descriptor, as sd_journal_get_timeout() says: forever (None),
    unless it has journal files that inotify does not watch."""
    ms = reader.get_timeout_ms()
    return None if ms < 0 else ms / 1000


def survive_truncated_files() -> None:
    """Install sjobd's SIGBUS handler (src/sigbus/sjob-sigbus.c): systemd 250 to 254 truncate a journal file as they
    archive it, and a reader that then touches its mapping beyond the new end got SIGBUS, which killed sjobd (seen on
    bookworm while a job's output rotated the journal). With it, such a page of a journal file reads as zeros;
    sd_journal skips what it cannot read there or fails, and the readers read again (a gap, or an error that opens
    the journal anew). Idempotent; without the library (a source tree), sjobd runs unprotected and says so."""
    if _sigbus:
        return
    library = Path(__file__).with_name("sjob_sigbus.so")
    try:
        handler = ctypes.CDLL(str(library), use_errno=True)
        if handler.sjob_sigbus_install() != 0:
            raise OSError(ctypes.get_errno(), "sigaction failed")
    except OSError as e:
        log.warning("no SIGBUS handler (%s): a journal file truncated while it is read can kill sjobd", e)
        return
    _sigbus.append(handler)


def sigbus_pages() -> int:
    """How many pages of truncated journal files the SIGBUS handler has replaced by zeros so far."""
    return int(_sigbus[0].sjob_sigbus_replaced()) if _sigbus else 0


_sigbus: list[ctypes.CDLL] = []  # the handler's library, once installed


def _open_reader() -> journal.Reader:
    reader = journal.Reader(flags=journal.LOCAL_ONLY)
    reader.data_threshold = FIELD_MAX
    return reader


def _fields(reader: journal.Reader) -> dict[str, bytes]:
    """The entry's fields. A field that occurs twice comes back as a list; our shim never writes such entries, so
    such a field is dropped. Copied only when there is one: copying every entry's ~25 fields cost as much as
    reading it."""
    fields: dict[str, typing.Any] = reader._get_all()
    if any(type(value) is not bytes for value in fields.values()):
        return {key: value for key, value in fields.items() if type(value) is bytes}
    return fields


def _unit_of(reader: journal.Reader) -> str:
    """The entry's _SYSTEMD_UNIT alone, without decoding the rest of it."""
    try:
        value = typing.cast(typing.Any, reader)._get("_SYSTEMD_UNIT")  # sd_journal_get_data; not in the stubs
    except KeyError:
        return ""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _is_job_unit(unit: str) -> bool:
    return unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX)


def _match_run(reader: journal.Reader, match: list[str], run: str) -> None:
    """Match `match`'s entries of one run of the unit: those journald stamped with it, and the exit record that
    names it itself (logformat.run_of; the record's filter still checks each entry's run)."""
    reader.add_match(*match, f"_SYSTEMD_INVOCATION_ID={run}")
    reader.add_disjunction()
    reader.add_match(*match, f"{logformat.F_EVENT}=exit", "_UID=0", f"{logformat.F_INVOCATION}={run}")


def _stamped(record: R, when_usec: int, fields: dict[str, bytes]) -> R:
    """The record with what journald says of its entry: when it came (`when_usec`, the entry's realtime), and from
    which run of the unit."""
    if isinstance(record, OutputRecord):  # built anew: dataclasses.replace cost a tenth of reading a large job
        return typing.cast(R, OutputRecord(record.seq, record.stream, record.data, when_usec))
    if isinstance(record, ExitRecord | StartRecord):
        run = logformat.run_of(fields, record)
        return dataclasses.replace(record, when_usec=when_usec, invocation=run)
    return record


@contextlib.contextmanager
def _watching(reader: journal.Reader) -> Iterator[asyncio.Event]:
    """An event that is set whenever the journal may have changed for `reader`."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    fd = reader.fileno()
    loop.add_reader(fd, changed.set)
    try:
        yield changed
    finally:
        loop.remove_reader(fd)


class _JobReader:
    """One job's records in order, each once, however the journal behaves.

    While journald rotates, sd_journal can skip a file it finds truncated ("Journal file ... is truncated,
    ignoring file", systemd issue 40053) and so miss entries. Output records are numbered (SJOB_SEQ) and the eof
    record says how many there were, so a gap shows; then the reader is reopened after the last record it
    delivered and reads again, until the gap closes or GAP_RETRIES run out.

    A retried job's unit runs more than once, each run (attempt) with its own start record and output numbered
    from 1: the reader numbers the attempts' start records (1, 2, ...) and the output on across them, so a job's
    output has one sequence however many attempts it took (`after_seq` resumes anywhere in it).
    """

    def __init__(self, job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None) -> None:
        self.job_id = job_id
        # Kept across reopens: it knows the forwarders' pids.
        self.filter = logformat.RecordFilter(unit, owner_uid, invocation)
        self.cursor: str | None = None  # of the last record delivered
        self.gap = False  # whether a missing record stopped the last read()
        self.expected = 1  # the SJOB_SEQ of the next output record of the current attempt
        self.before = 0  # output records of the earlier attempts
        self.gaps = 0
        self.reader = self._open()

    def _open(self) -> journal.Reader:
        reader = _open_reader()
        # _SYSTEMD_UNIT too, in the match, not only in the filter: journald indexes it and takes it from the
        # kernel, so entries others planted with this job's id are never even loaded (review of E: a flood of
        # large planted entries, each decoded and then refused, stalled the loop).
        match = [f"{logformat.F_JOB_ID}={self.job_id}", f"_SYSTEMD_UNIT={self.filter.unit}"]
        if self.filter.invocation is not None:
            _match_run(reader, match, self.filter.invocation)
        else:
            reader.add_match(*match)
        if self.cursor is None:
            reader.seek_head()
        else:
            reader.seek_cursor(self.cursor)
            # Land on the cursor's entry so that reading resumes after it; if that entry is gone, step back so
            # that the entry we landed on is not skipped.
            if reader._next() and not reader.test_cursor(self.cursor):
                reader._previous()
        return reader

    def reopen(self) -> None:
        self.reader.close()
        self.reader = self._open()

    def close(self) -> None:
        self.reader.close()

    def read(self) -> Iterator[Record | None]:
        """The records readable now, one at a time; `gap` tells afterwards whether a missing record stopped it.
        Every READ_BATCH entries examined, accepted or not, it yields None, so that entries the job forged inside
        its own unit cannot keep the caller from giving the event loop its turn."""
        self.gap = False
        try:
            yield from self._read()
        except OSError as e:
            # A journal file that changed under the reader (journald truncated it while archiving: zeros where an
            # entry was). Read again from the last record delivered, in a fresh reader, as for a gap.
            self.gaps += 1
            if self.gaps > GAP_RETRIES:
                raise
            log.warning(
                "job %s: reading the journal failed (%s; %d pages zeroed); reading it again",
                self.job_id,
                e,
                sigbus_pages(),
            )
            self.gap = True

    def _read(self) -> Iterator[Record | None]:
        reader = self.reader
        examined = 0
        while reader._next():
            examined += 1
            if examined % READ_BATCH == 0:
                yield None
            fields = _fields(reader)
            record = logformat.parse_record(fields)
            if record is None or not self.filter.admits(fields, record):
                continue
            if isinstance(record, OutputRecord):
                if record.seq < self.expected:
                    continue  # read again after a reopen
                if record.seq > self.expected and not self._give_up(record.seq):
                    self.gap = True
                    return
                if record.seq == self.expected:
                    # The gap closed: the next one is a new gap with all its retries. Counted over the job's
                    # life, a few hundred rotations made the 13th passing gap a loss (bookworm, test of rotation).
                    self.gaps = 0
                self.expected = record.seq + 1
                record = OutputRecord(self.before + record.seq, record.stream, record.data)
            elif (
                isinstance(record, EofRecord) and record.records >= self.expected and not self._give_up(record.records)
            ):
                self.gap = True
                return
            elif isinstance(record, StartRecord):
                if self.filter.runs > 1:  # the next attempt: its output is numbered from 1 again
                    self.before += self.expected - 1
                    self.expected = 1
                record = dataclasses.replace(record, attempt=self.filter.runs)
            self.cursor = reader._get_cursor()
            yield _stamped(record, reader._get_realtime(), fields)
        self.gaps = 0  # all there was, read without a gap: any gap has closed (review of H)

    def _give_up(self, seq: int) -> bool:
        self.gaps += 1
        if self.gaps <= GAP_RETRIES:
            return False
        log.warning(
            "job %s: output records %d to %d are missing from the journal; going on without them",
            self.job_id,
            self.expected,
            seq - 1 if seq >= self.expected else seq,
        )
        self.gaps = 0
        return True


class Journal:
    """Reads job records from journald."""

    def __init__(self) -> None:
        self._fast_free = FAST_FOLLOWERS  # followers that may still poll at POLL_MAX
        survive_truncated_files()

    async def job_records(
        self, job_id: str, unit: str, owner_uid: int | None, *, follow: bool, invocation: str | None = None
    ) -> AsyncGenerator[Record | None, None]:
        """The job's records from its first on, in order and complete (see _JobReader); with `invocation`, only that
        run's of the unit (a timer's run). With `follow`, keep waiting for more, and yield None after each quiet
        TICK so the caller can check on the job; the caller decides when to stop.

        journald tells readers about new entries through inotify only every ~250 ms (it coalesces its change
        notifications), but its writes land in the mmap'd journal file at once. So a follower also polls: every
        POLL_MIN after new records, backing off to POLL_MAX while the job wrote something in the last QUICK_FOR
        seconds, and to POLL_IDLE after that.
        """
        loop = asyncio.get_running_loop()
        job = _JobReader(job_id, unit, owner_uid, invocation)
        fast = False  # whether this follower holds one of the FAST_FOLLOWERS slots
        try:
            poll = POLL_MIN
            last_tick = last_record = loop.time()
            while True:
                with _watching(job.reader) as changed:
                    while True:
                        for record in job.read():
                            if record is None:
                                await asyncio.sleep(0)
                                continue
                            poll = POLL_MIN
                            last_tick = last_record = loop.time()
                            if fast:  # not held while the caller takes its time with the record (a full pipe)
                                fast = False
                                self._fast_free += 1
                            yield record
                        if job.gap:
                            break
                        if not follow:
                            return
                        await _changed_within(changed, poll)
                        if changed.is_set():
                            changed.clear()
                            job.reader.process()
                        quick = loop.time() - last_record < QUICK_FOR
                        if quick != fast and (fast or self._fast_free > 0):
                            fast = quick
                            self._fast_free += -1 if fast else 1
                        poll = min(poll * 2, POLL_MAX if fast else POLL_SLOW if quick else POLL_IDLE)
                        if loop.time() - last_tick >= TICK:
                            last_tick = loop.time()
                            yield None
                await asyncio.sleep(min(GAP_DELAY * 2**job.gaps, 1.0))
                job.reopen()
        finally:
            if fast:
                self._fast_free += 1
            job.close()

    async def exits(self, since_usec: int) -> AsyncIterator[tuple[str, ExitRecord]]:
        """Every job exit recorded since `since_usec` (realtime), then every new one, forever."""
        exit_match = [f"{logformat.F_EVENT}={logformat.Event.exit.value}", "_UID=0"]
        async for fields, when_usec in self._entries(since_usec, exit_match, unit_ok=_is_job_unit):
            record = logformat.parse_record(fields)
            job_id = fields.get(logformat.F_JOB_ID, b"").decode("ascii", "replace")
            # Root's, and from the job's own unit: its ExecStopPost (a root job elsewhere is not).
            unit = f"{UNIT_PREFIX}{job_id}{UNIT_SUFFIX}".encode()
            if isinstance(record, ExitRecord) and job_id and fields.get("_SYSTEMD_UNIT") == unit:
                yield job_id, _stamped(record, when_usec, fields)

    async def runs(self, since_usec: int, wanted: Callable[[str], bool]) -> AsyncIterator[UnitEvent]:
        """The start and exit records of the units `wanted` says yes to, since `since_usec`, then every new one,
        forever: how a timer's runs are seen (each is a run of the timer's service). Start records come from the
        unit's own processes, exit records from root in the unit (its ExecStopPost)."""
        start_match = [f"{logformat.F_EVENT}={logformat.Event.start.value}"]
        exit_match = [f"{logformat.F_EVENT}={logformat.Event.exit.value}", "_UID=0"]
        async for fields, when_usec in self._entries(since_usec, start_match, exit_match, unit_ok=wanted):
            unit = fields.get("_SYSTEMD_UNIT", b"").decode("ascii", "replace")
            record = logformat.parse_record(fields)
            if isinstance(record, StartRecord | ExitRecord) and logformat.run_of(fields, record) and wanted(unit):
                uid = fields.get("_UID", b"").decode("ascii", "replace")
                yield UnitEvent(unit, int(uid) if uid.isdigit() else -1, _stamped(record, when_usec, fields))

    async def _entries(
        self, since_usec: int, *matches: list[str], unit_ok: Callable[[str], bool]
    ) -> AsyncIterator[tuple[dict[str, bytes], int]]:
        """The entries that match any of `matches` since `since_usec` (realtime), then every new one, forever, each
        with when journald received it (realtime).

        Anyone can write an entry that matches (SJOB_EVENT=start is a field like any other), so an entry is decoded
        only once its _SYSTEMD_UNIT, which journald sets, passes `unit_ok`; and every READ_BATCH entries examined
        the event loop gets a turn, so a flood of planted entries cannot stall sjobd (review of J).

        When journal files come and go (rotation), the reader is reopened after the last entry it delivered, so
        that a file sd_journal skipped while it was being rotated is read after all (systemd issue 40053). A journal
        that cannot be opened or read (EMFILE while many followers hold readers) is tried again after a pause, from
        there too: this never ends, nor fails, while sjobd runs."""
        cursor: str | None = None
        failures = 0  # in a row, without an entry delivered between them
        while True:
            reader: journal.Reader | None = None
            try:
                reader = _open_reader()
                with _watching(reader) as changed:
                    for i, match in enumerate(matches):
                        if i:
                            reader.add_disjunction()
                        reader.add_match(*match)
                    if cursor is None:
                        reader.seek_realtime(since_usec)
                    else:
                        reader.seek_cursor(cursor)
                        if reader._next() and not reader.test_cursor(cursor):
                            reader._previous()
                    state = journal.NOP
                    examined = 0
                    while state != journal.INVALIDATE:
                        while reader._next():
                            examined += 1
                            if examined % READ_BATCH == 0:
                                await asyncio.sleep(0)
                            if unit_ok(_unit_of(reader)):
                                yield _fields(reader), reader._get_realtime()
                                failures = 0
                            cursor = reader._get_cursor()  # once the entry is handled: one that failed is read again
                        # journald's inotify wakes the reader (within ~250 ms), and nothing else does: an idle sjobd
                        # sleeps (issue H: no polling). Only journal files on a network file system, which inotify
                        # does not watch, have sd_journal ask for a timeout.
                        await _changed_within(changed, _timeout(reader))
                        changed.clear()
                        state = reader.process()
            except OSError as e:  # a file changed under the reader (see survive_truncated_files): open it again
                failures += 1
                delay = min(2.0**failures, REOPEN_DELAY_MAX)
                zeroed = sigbus_pages()
                log.warning("watching the journal failed (%s; %d pages zeroed); again in %gs", e, zeroed, delay)
                await asyncio.sleep(delay)
            finally:
                if reader is not None:
                    reader.close()

    def find_quota(
        self, job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None
    ) -> QuotaRecord | None:
        """The job's quota record, if its forwarder wrote one (with `invocation`: that run's forwarder)."""
        record = self._forwarders(job_id, unit, owner_uid, logformat.Event.quota, invocation)
        return record if isinstance(record, QuotaRecord) else None

    def find_eof(
        self, job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None
    ) -> EofRecord | None:
        """The job's end-of-output record (what it wrote in all), once its forwarder has written it."""
        record = self._forwarders(job_id, unit, owner_uid, logformat.Event.eof, invocation)
        return record if isinstance(record, EofRecord) else None

    def _forwarders(
        self, job_id: str, unit: str, owner_uid: int | None, event: logformat.Event, invocation: str | None
    ) -> Record | None:
        """The job's first record of `event` from its forwarder: the pid of the job's first start record (of the run
        `invocation`, if given), and only entries from that pid are looked at (both matches are indexed, so entries
        the job forged cost nothing here). `owner_uid` None: any uid of the unit's own (a DynamicUser= unit)."""
        reader = _open_reader()
        try:
            match = [f"{logformat.F_JOB_ID}={job_id}", f"_SYSTEMD_UNIT={unit}"]
            if owner_uid is not None:
                match.append(f"_UID={owner_uid}")
            if invocation:
                match.append(f"_SYSTEMD_INVOCATION_ID={invocation}")
            reader.add_match(*match, f"{logformat.F_EVENT}={logformat.Event.start.value}")
            reader.seek_head()
            if not reader._next() or not isinstance(logformat.parse_record(start := _fields(reader)), StartRecord):
                return None
            reader.flush_matches()
            pid = start.get("_PID", b"").decode("ascii", "replace")
            reader.add_match(*match, f"{logformat.F_EVENT}={event.value}", f"_PID={pid}")
            reader.seek_head()
            return logformat.parse_record(_fields(reader)) if reader._next() else None
        finally:
            reader.close()

    def find_manager_exit(self, unit: str, invocation: str | None = None) -> ExitRecord | None:
        """How `unit` ended, as the service manager itself logged it, for a job whose own exit record is missing (its
        ExecStopPost could not run; or systemd < 257 lost it on a daemon-reload). Only PID 1's entries (_PID=1 and
        _UID=0 are journald's, from the kernel; nobody else has them) about the unit (UNIT=), of the run
        `invocation` if given (a timer's run): its "Main process exited" (EXIT_CODE, EXIT_STATUS; logged for
        failures only) and its final "Deactivated successfully" or "Failed with result" (UNIT_RESULT). None if the
        manager logged no end of it."""
        reader = _open_reader()
        try:
            reader.add_match(
                "_PID=1", "_UID=0", f"UNIT={unit}", *([f"INVOCATION_ID={invocation}"] if invocation else [])
            )
            reader.seek_head()
            result: str | None = None
            code, status, when = "", "", 0
            while reader._next():
                fields = _fields(reader)
                message_id = fields.get("MESSAGE_ID", b"").decode("ascii", "replace")
                if message_id == logformat.MANAGER_PROCESS_EXIT and fields.get("MESSAGE", b"").startswith(
                    f"{unit}: Main process".encode()
                ):
                    code = fields.get("EXIT_CODE", b"").decode("ascii", "replace")
                    status = fields.get("EXIT_STATUS", b"").decode("ascii", "replace")
                elif message_id == logformat.MANAGER_UNIT_SUCCESS:
                    result, when = "success", reader._get_realtime()
                elif message_id == logformat.MANAGER_UNIT_FAILURE:
                    result, when = fields.get("UNIT_RESULT", b"").decode("ascii", "replace"), reader._get_realtime()
            if result is None:
                return None
            # A clean end of the main process (exit 0, or SIGTERM and its like) is logged at debug level only: no
            # code then (Reaper._manager_exit decides what that means).
            return logformat.manager_exit(result, code, status, when)
        finally:
            reader.close()

    def find_exits(self, job_id: str, unit: str, invocation: str | None = None) -> list[ExitRecord]:
        """The job's exit records in journald, in order: one for each run of its unit (a retried job's attempts), or
        with `invocation` that run's only (a timer's run)."""
        reader = _open_reader()
        try:
            match = [f"{logformat.F_JOB_ID}={job_id}", f"{logformat.F_EVENT}=exit", "_UID=0", f"_SYSTEMD_UNIT={unit}"]
            if invocation:
                _match_run(reader, match, invocation)
            else:
                reader.add_match(*match)
            reader.seek_head()
            found = []
            while reader._next():
                fields = _fields(reader)
                if isinstance(record := logformat.parse_record(fields), ExitRecord):
                    stamped = _stamped(record, reader._get_realtime(), fields)
                    if not invocation or stamped.invocation == invocation:
                        found.append(stamped)
            return found
        finally:
            reader.close()
