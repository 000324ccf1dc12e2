"""The journal reader of a job whose unit runs more than once (issue J): a retried job's attempts, each with its own
forwarder and output numbered from 1, read as one job's records (attempts numbered, output numbered on); and a
timer's run, read by its invocation alone. sd_journal is replaced by a list of entries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supervisor import journal
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord, Record, StartRecord

UNIT = "sjob-1a2b3c4d.service"


class ListReader:
    """What _JobReader asks of sd_journal's Reader, over a list of entries."""

    def __init__(self, entries: list[dict[str, bytes]]) -> None:
        self._entries = entries
        self._matches: list[tuple[str, bytes]] = []
        self._at = -1
        self._selected: list[dict[str, bytes]] = []

    def add_match(self, *matches: str) -> None:
        self._matches += [(m.split("=", 1)[0], m.split("=", 1)[1].encode()) for m in matches]

    def seek_head(self) -> None:
        self._selected = [e for e in self._entries if all(e.get(k) == v for k, v in self._matches)]
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
