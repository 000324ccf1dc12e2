"""The journal reader of a job whose unit runs more than once (issue J): a retried job's attempts, each with its own
forwarder and output numbered from 1, read as one job's records (attempts numbered, output numbered on); and a
timer's run, read by its invocation alone. sd_journal is replaced by a list of entries."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import typing
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from supervisor import journal
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord, Record, StartRecord

UNIT = "sjob-1a2b3c4d.service"


class ListReader:
    """What _JobReader asks of sd_journal's Reader, over a list of entries."""

    def __init__(self, entries: list[dict[str, bytes]]) -> None:
        self._entries = entries
        self._groups: list[list[tuple[str, bytes]]] = [[]]  # sd_journal's: any group, all matches of it
        self._at = -1
        self._selected: list[dict[str, bytes]] = []

    def add_match(self, *matches: str) -> None:
        self._groups[-1] += [(m.split("=", 1)[0], m.split("=", 1)[1].encode()) for m in matches]

    def add_disjunction(self) -> None:
        self._groups.append([])

    def seek_head(self) -> None:
        self._selected = [
            e for e in self._entries if any(all(e.get(k) == v for k, v in group) for group in self._groups)
        ]
        self._at = -1

    def _next(self) -> bool:
        self._at += 1
        return self._at < len(self._selected)

    def _get_all(self) -> dict[str, bytes]:
        return self._selected[self._at]

    def _get_cursor(self) -> str:
        return str(self._at)

    def _get_realtime(self) -> int:
        return 1000 + self._at

    def close(self) -> None:
        pass


def entry(run: str, pid: int, uid: int = 1000, **fields: str) -> dict[str, bytes]:
    return {
        "SJOB_JOB_ID": b"1a2b3c4d",
        "_SYSTEMD_UNIT": UNIT.encode(),
        "_SYSTEMD_INVOCATION_ID": run.encode(),
        "_PID": str(pid).encode(),
        "_UID": str(uid).encode(),
        **{k: v.encode() for k, v in fields.items()},
    }


def attempt(run: str, pid: int, *lines: str, status: int = 1) -> list[dict[str, bytes]]:
    """One run of the unit, as the shim and its ExecStopPost write it."""
    out = [entry(run, pid, SJOB_EVENT="start")]
    out += [entry(run, pid, SJOB_STREAM="stdout", SJOB_SEQ=str(i), MESSAGE=line) for i, line in enumerate(lines, 1)]
    out.append(entry(run, pid, SJOB_EVENT="eof", SJOB_RECORDS=str(len(lines))))
    result = {"SJOB_RESULT": "exit-code" if status else "success", "SJOB_EXIT_CODE": "exited"}
    out.append(entry(run, 5, uid=0, SJOB_EVENT="exit", SJOB_EXIT_STATUS=str(status), **result))
    return out


def read(
    entries: list[dict[str, bytes]], monkeypatch: pytest.MonkeyPatch, invocation: str | None = None
) -> list[Record]:
    monkeypatch.setattr(journal, "_open_reader", lambda: ListReader(entries))
    reader = journal._JobReader("1a2b3c4d", UNIT, 1000, invocation)

    def records() -> Iterator[Record]:
        for record in reader.read():
            if record is not None:
                yield record

    return list(records())


def test_attempts_are_numbered_and_their_output_numbered_on(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [*attempt("a" * 32, 70, "one", "two"), *attempt("b" * 32, 80, "three"), *attempt("c" * 32, 90, "four")]
    # The first attempt's job forges a start and output in the second attempt's place: same run, wrong pid.
    entries.insert(6, entry("a" * 32, 71, SJOB_EVENT="start"))
    records = read(entries, monkeypatch)
    starts = [r for r in records if isinstance(r, StartRecord)]
    assert [(s.attempt, s.invocation) for s in starts] == [(1, "a" * 32), (2, "b" * 32), (3, "c" * 32)]
    output = [(r.seq, r.data) for r in records if isinstance(r, OutputRecord)]
    assert output == [(1, b"one\n"), (2, b"two\n"), (3, b"three\n"), (4, b"four\n")]
    exits = [r for r in records if isinstance(r, ExitRecord)]
    assert [(e.invocation, e.exit_status) for e in exits] == [("a" * 32, 1), ("b" * 32, 1), ("c" * 32, 1)]
    assert sum(isinstance(r, EofRecord) for r in records) == 3


def test_a_timer_run_is_read_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [*attempt("a" * 32, 70, "first run", status=0), *attempt("b" * 32, 80, "second run", status=0)]
    records = read(entries, monkeypatch, invocation="b" * 32)
    assert [(r.seq, r.data) for r in records if isinstance(r, OutputRecord)] == [(1, b"second run\n")]
    assert [r.attempt for r in records if isinstance(r, StartRecord)] == [1]


def test_a_timer_runs_exit_record_counts_by_the_run_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """journald may leave out its stamp (seen on bookworm), or stamp the run the unit had when it read the entry: an
    exit record goes to the run it names itself (SJOB_INVOCATION, from systemd's $INVOCATION_ID)."""
    first, second = attempt("a" * 32, 70, "first run", status=3), attempt("b" * 32, 80, "second run", status=0)
    del first[-1]["_SYSTEMD_INVOCATION_ID"]
    first[-1]["SJOB_INVOCATION"] = b"a" * 32
    second[-1]["_SYSTEMD_INVOCATION_ID"] = b"c" * 32  # stamped as a later run's
    second[-1]["SJOB_INVOCATION"] = b"b" * 32
    entries = [*first, *second]
    for run, status in (("a" * 32, 3), ("b" * 32, 0)):
        records = read(entries, monkeypatch, invocation=run)
        assert [(r.invocation, r.exit_status) for r in records if isinstance(r, ExitRecord)] == [(run, status)]
        monkeypatch.setattr(journal, "_open_reader", lambda: ListReader(entries))
        found = journal.Journal.find_exits(typing.cast(Any, None), "1a2b3c4d", UNIT, run)
        assert [(r.invocation, r.exit_status) for r in found] == [(run, status)]
    assert read(entries, monkeypatch, invocation="c" * 32) == []


class FloodReader(ListReader):
    """A journal full of entries that match the timer watcher's SJOB_EVENT=start but come from elsewhere: planted
    by a user, each one large. Counts what it is asked to decode."""

    def __init__(self, entries: list[dict[str, bytes]]) -> None:
        super().__init__(entries)
        self.decoded = 0

    def add_disjunction(self) -> None:
        pass

    def seek_realtime(self, usec: int) -> None:
        self._selected = list(self._entries)  # every entry matches, as every planted one would
        self._at = -1

    def _get(self, field: str) -> bytes:
        value = self._selected[self._at].get(field)
        if value is None:
            raise KeyError(field)
        return value

    def _get_all(self) -> dict[str, bytes]:
        self.decoded += 1
        return super()._get_all()

    def process(self) -> int:
        return 0


@contextlib.contextmanager
def unwatched(_: object) -> Iterator[asyncio.Event]:
    """In place of journal._watching: no inotify, and no change ever comes."""
    yield asyncio.Event()


def test_planted_entries_are_neither_decoded_nor_allowed_to_hold_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review of J: anyone can write SJOB_EVENT=start; sjobd decoded every such entry and read them all in one turn
    of its event loop, so a flood of big ones stalled every request."""

    planted = [{"SJOB_EVENT": b"start", "_SYSTEMD_UNIT": b"user@1000.service", "BIG": b"A" * 1000}] * 1000
    real = entry("run1", 10, SJOB_EVENT="start", SJOB_SEQ="0")
    reader = FloodReader([*planted, real])
    monkeypatch.setattr(journal, "_open_reader", lambda: reader)

    monkeypatch.setattr(journal, "_watching", unwatched)

    async def body() -> None:
        turns = 0

        async def other_requests() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        others = asyncio.create_task(other_requests())
        await asyncio.sleep(0)
        before = turns
        runs = typing.cast(AsyncGenerator[Any, None], journal.Journal().runs(0, lambda unit: unit == UNIT))
        event = await anext(runs)
        await runs.aclose()
        others.cancel()
        assert event.unit == UNIT
        assert reader.decoded == 1  # the real entry alone
        assert turns - before >= len(planted) // journal.READ_BATCH  # the loop had its turns meanwhile

    asyncio.run(body())


def test_a_field_that_occurs_twice_is_dropped() -> None:
    """sd_journal gives a field written twice as a list; the job's own processes can write such entries."""

    class Twice(ListReader):
        def _get_all(self) -> dict[str, bytes]:
            return {**super()._get_all(), "_PID": [b"1", b"2"], "OTHER": [b"x", b"y"]}  # type: ignore[dict-item]

    reader = Twice([entry("a" * 32, 70, SJOB_EVENT="start")])
    reader.seek_head()
    assert reader._next()
    fields = journal._fields(typing.cast(Any, reader))
    assert "_PID" not in fields
    assert "OTHER" not in fields
    assert all(isinstance(value, bytes) for value in fields.values())
    assert fields["SJOB_EVENT"] == b"start"


def test_only_a_few_followers_at_a_time_poll_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of H: a follower of a job that writes polls every 20 ms; many followers of chatty jobs must not
    multiply sjobd's wake-ups. The fast slots are held while the job is chatty and given back at the end."""
    monkeypatch.setattr(journal, "FAST_FOLLOWERS", 2)
    entries = attempt("a" * 32, 70, "one", status=0)[:2]  # a start and a line: the job is running and wrote
    monkeypatch.setattr(journal, "_open_reader", lambda: ListReader(entries))

    class Quiet(ListReader):
        def process(self) -> int:
            return 0

    monkeypatch.setattr(journal, "_watching", unwatched)
    monkeypatch.setattr(journal, "_open_reader", lambda: Quiet(entries))

    async def body() -> None:
        log = journal.Journal()
        followers = [
            typing.cast(AsyncGenerator[Any, None], log.job_records("1a2b3c4d", UNIT, 1000, follow=True))
            for _ in range(3)
        ]
        for follower in followers:
            assert isinstance(await anext(follower), StartRecord)
            assert isinstance(await anext(follower), OutputRecord)
        tasks = [asyncio.ensure_future(anext(follower)) for follower in followers]
        await asyncio.sleep(0.2)  # each has polled a few times by now
        assert log._fast_free == 0  # two hold the slots; the third polls at POLL_SLOW
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for follower in followers:
            await follower.aclose()
        assert log._fast_free == 2

    asyncio.run(body())


class RotatingReader(ListReader):
    """A journal that journald keeps rotating: each time the reader is opened, one record past where it resumes is
    missing for that open only (a file sd_journal skipped as truncated, systemd issue 40053), readable on the next."""

    def __init__(self, entries: list[dict[str, bytes]], hidden: set[int]) -> None:
        super().__init__(entries)
        self._hidden = hidden  # shared by the reader's reopens: indexes into entries, each missing for one open

    def _select(self, after: int) -> None:
        self._selected = [e for i, e in enumerate(self._entries) if i not in self._hidden]
        self._at = -1
        if later := [i for i in self._hidden if i > after]:
            self._hidden.discard(min(later))  # missing now, there on the next open

    def seek_head(self) -> None:
        self._select(-1)

    def seek_cursor(self, cursor: str) -> None:
        self._select(int(cursor))
        self._at = next(i for i, e in enumerate(self._selected) if e is self._entries[int(cursor)]) - 1

    def test_cursor(self, cursor: str) -> bool:
        return self._get_cursor() == cursor

    def _previous(self) -> bool:
        self._at -= 1
        return self._at >= 0

    def _get_cursor(self) -> str:
        return str(next(i for i, e in enumerate(self._entries) if e is self._selected[self._at]))


def test_every_passing_gap_gets_its_own_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on bookworm: a follower through a few hundred rotations lost output. The gaps were counted over the
    job's life, so the 13th gap that would have closed on the next read was given up on at once."""
    lines = [f"line {i}" for i in range(1, 61)]
    entries = attempt("a" * 32, 70, *lines, status=0)
    hidden = set(range(2, 62, 2))  # every other output record missing once: 30 gaps, each closed by a reread
    monkeypatch.setattr(journal, "_open_reader", lambda: RotatingReader(entries, hidden))
    reader = journal._JobReader("1a2b3c4d", UNIT, 1000)
    records: list[Record] = []
    for _ in range(100):
        records += [r for r in reader.read() if r is not None]
        if not reader.gap:
            break
        reader.reopen()
    assert [r.data for r in records if isinstance(r, OutputRecord)] == [f"{line}\n".encode() for line in lines]
    assert isinstance(records[-1], ExitRecord)


def test_the_watchers_reading_outlives_a_journal_it_cannot_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """sjobd's exit and run watchers read the journal for as long as sjobd runs. A journal that cannot be opened
    (EMFILE while many followers hold readers) is tried again after a pause, and their reading goes on: it never
    ends nor fails (each watcher had a retry loop of its own for this)."""
    failures = [OSError(errno.EMFILE, "Too many open files")] * 2
    exit_entry = attempt("a" * 32, 70, "out", status=3)[-1]

    def open_reader() -> FloodReader:
        if failures:
            raise failures.pop()
        return FloodReader([exit_entry])

    monkeypatch.setattr(journal, "_open_reader", open_reader)
    monkeypatch.setattr(journal, "_watching", unwatched)
    monkeypatch.setattr(journal, "REOPEN_DELAY_MAX", 0.01)

    async def body() -> None:
        exits = typing.cast(AsyncGenerator[Any, None], journal.Journal().exits(0))
        job_id, record = await asyncio.wait_for(anext(exits), 10)
        await exits.aclose()
        assert (job_id, record.exit_status) == ("1a2b3c4d", 3)
        assert not failures

    asyncio.run(body())
