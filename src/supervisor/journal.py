"""The one place that reads journald, through systemd-python's sd_journal binding.

Readers are opened LOCAL_ONLY: a job running as uid 1000 has its entries in user-1000.journal when the journal is
persistent, which a SYSTEM_ONLY reader would never see. `data_threshold = 0` because sd_journal otherwise hands
back at most 64 KiB of a field, and an output record can be that large.

Entries are matched by SJOB_JOB_ID (an indexed field) and then vetted by `logformat.accepts`: only entries from
the job's own unit (or lacking unit metadata, see sjob-shim.c) and from the job's owner count as output, and only
entries written by root count as the job's exit.

sd_journal calls do a little blocking file I/O on mmap'd files; they are short and run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import typing
from collections.abc import AsyncIterator, Iterator

from systemd import journal

from supervisor import logformat
from supervisor.logformat import ExitRecord, Record

R = typing.TypeVar("R", bound=Record)

TICK = 2.0  # seconds between checks on a quiet job, so callers can notice a unit that vanished
POLL_MIN = 0.01  # seconds
POLL_MAX = 0.1


def _open_reader() -> journal.Reader:
    reader = journal.Reader(flags=journal.LOCAL_ONLY)
    reader.data_threshold = 0
    return reader


def _fields(reader: journal.Reader) -> dict[str, bytes]:
    # A field that occurs twice comes back as a list; our shim never writes such entries, so drop them.
    return {key: value for key, value in reader._get_all().items() if isinstance(value, bytes)}


def _stamped(record: R, reader: journal.Reader) -> R:
    if isinstance(record, ExitRecord):
        return dataclasses.replace(record, when_usec=reader._get_realtime())
    return record


class Journal:
    """Reads job records from journald."""

    @contextlib.contextmanager
    def _watching(self, reader: journal.Reader) -> Iterator[asyncio.Event]:
        """An event that is set whenever the journal may have changed for `reader`."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        fd = reader.fileno()
        loop.add_reader(fd, changed.set)
        try:
            yield changed
        finally:
            loop.remove_reader(fd)

    async def job_records(
        self, job_id: str, unit: str, owner_uid: int, *, follow: bool
    ) -> AsyncIterator[Record | None]:
        """The job's records from its first on. With `follow`, keep waiting for more, and yield None after each
        quiet TICK so the caller can check on the job; the caller decides when to stop.

        journald tells readers about new entries through inotify only every ~250 ms (it coalesces its change
        notifications), but its writes land in the mmap'd journal file at once. So a follower also polls: every
        POLL_MIN after new records, backing off to POLL_MAX while the job is quiet.
        """
        reader = _open_reader()
        loop = asyncio.get_running_loop()
        try:
            with self._watching(reader) as changed:
                reader.add_match(f"{logformat.F_JOB_ID}={job_id}")
                reader.seek_head()
                poll = POLL_MIN
                last_tick = loop.time()
                while True:
                    while reader._next():
                        fields = _fields(reader)
                        record = logformat.parse_record(fields)
                        if record is not None and logformat.accepts(fields, record, unit, owner_uid):
                            poll = POLL_MIN
                            last_tick = loop.time()
                            yield _stamped(record, reader)
                    if not follow:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), poll)
                    if changed.is_set():
                        changed.clear()
                        reader.process()
                    poll = min(poll * 2, POLL_MAX)
                    if loop.time() - last_tick >= TICK:
                        last_tick = loop.time()
                        yield None
        finally:
            reader.close()

    async def exits(self, since_usec: int) -> AsyncIterator[tuple[str, ExitRecord]]:
        """Every job exit recorded since `since_usec` (realtime), then every new one, forever."""
        reader = _open_reader()
        try:
            with self._watching(reader) as changed:
                reader.add_match(f"{logformat.F_EVENT}={logformat.Event.exit.value}", "_UID=0")
                reader.seek_realtime(since_usec)
                while True:
                    while reader._next():
                        fields = _fields(reader)
                        record = logformat.parse_record(fields)
                        job_id = fields.get(logformat.F_JOB_ID, b"").decode("ascii", "replace")
                        if isinstance(record, ExitRecord) and job_id:
                            yield job_id, _stamped(record, reader)
                    await changed.wait()
                    changed.clear()
                    reader.process()
        finally:
            reader.close()

    def find_exit(self, job_id: str) -> ExitRecord | None:
        """The job's exit record if journald has one."""
        reader = _open_reader()
        try:
            reader.add_match(f"{logformat.F_JOB_ID}={job_id}", f"{logformat.F_EVENT}=exit", "_UID=0")
            reader.seek_tail()
            if reader._previous():
                record = logformat.parse_record(_fields(reader))
                if isinstance(record, ExitRecord):
                    return _stamped(record, reader)
            return None
        finally:
            reader.close()
