"""OutputCopier: batches of output reach our stdout and stderr exactly and in order, one flush per run of one
stream, and last_seq says how far it got (sjob run resumes from there after a Ctrl-C)."""

from __future__ import annotations

import json
import signal
import sys
import threading

import pytest

from supervisor.cli.output import OutputCopier
from supervisor.errors import SjobError
from supervisor.protocol import AttemptStart, Chunk, Job, JobState, Stream

OUT, ERR = Stream.stdout, Stream.stderr


def _job() -> Job:
    return Job(
        id="0123abcd",
        unit="sjob-0123abcd.service",
        state=JobState.exited,
        uid=1000,
        user="alice",
        argv=["true"],
        cwd="/",
        created_usec=1,
    )


def _chunk(stream: Stream, data: bytes, seq: int) -> Chunk:
    return Chunk(stream, data, 1_700_000_000_000_000 + seq, seq)


class _Counting:
    """A binary sink that remembers what each flush sent on."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._held = bytearray()

    def write(self, data: bytes) -> int:
        self._held += data
        return len(data)

    def flush(self) -> None:
        self.writes.append(bytes(self._held))
        self._held.clear()


def test_runs_of_one_stream_are_written_at_once_and_streams_keep_their_order() -> None:
    copier = OutputCopier()
    out, err = _Counting(), _Counting()
    copier._sinks = {OUT: out, ERR: err}  # type: ignore[dict-item]
    batches: list[list[Chunk | AttemptStart] | Job] = [
        [_chunk(OUT, b"a\n", 1), _chunk(OUT, b"\r\n", 2), _chunk(ERR, b"oops", 3), _chunk(OUT, b"", 4)],
        [_chunk(OUT, b"<3>z", 5), _chunk(OUT, b"\x00\xff", 6)],
        _job(),
    ]
    assert copier.copy(batches) == _job()
    assert out.writes == [b"a\n\r\n", b"", b"<3>z\x00\xff"]
    assert err.writes == [b"oops"]
    assert copier.last_seq == 6


def test_json_has_a_line_per_piece_and_per_attempt(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    copier = OutputCopier(as_json=True)
    copier.copy([[_chunk(OUT, b"one\n", 1), AttemptStart(2, 1_700_000_000_000_009), _chunk(ERR, b"\xff", 2)], _job()])
    sys.stdout.flush()
    lines = [json.loads(line) for line in capfdbinary.readouterr().out.splitlines()]
    assert [(line.get("stream"), line.get("text"), line.get("base64"), line.get("attempt")) for line in lines] == [
        ("stdout", "one\n", None, None),
        (None, None, None, 2),
        ("stderr", None, "/w==", None),
    ]
    assert copier.last_seq == 2


def test_output_that_ends_without_the_job_is_an_error() -> None:
    copier = OutputCopier()
    copier._sinks = {OUT: _Counting(), ERR: _Counting()}  # type: ignore[dict-item]
    with pytest.raises(SjobError, match="without saying how the job stands"):
        copier.copy([[_chunk(OUT, b"x", 1)]])


def test_sigint_is_held_while_a_batch_is_written() -> None:
    """A Ctrl-C that comes while a batch is written is delivered after it, once last_seq covers the batch."""
    copier = OutputCopier()
    seen: list[int] = []

    class _Interrupting(_Counting):
        def write(self, data: bytes) -> int:
            # To this thread, which holds SIGINT blocked: sent to the process, another thread of it (pytest-xdist
            # runs one) could take the signal at once, and the test would fail for no fault of the copier.
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            seen.append(copier.last_seq)
            return super().write(data)

    copier._sinks = {OUT: _Interrupting(), ERR: _Counting()}  # type: ignore[dict-item]
    with pytest.raises(KeyboardInterrupt):
        copier.copy([[_chunk(OUT, b"a", 1), _chunk(OUT, b"b", 2)], [_chunk(OUT, b"c", 3)], _job()])
    assert copier.last_seq == 2  # the first batch whole, and nothing of the second
    assert seen == [2, 2]  # both pieces of the first batch written with SIGINT held, and none of the second
