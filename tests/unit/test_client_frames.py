"""The client's side of FollowPipe: frames come out whole and in order however the reads cut them."""

from __future__ import annotations

import itertools
import os
import random
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.client import _frames
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import FRAME, FRAME_ATTEMPT, MAX_FRAME_DATA, AttemptStart, Chunk, Stream, frame


def _pieces() -> list[Chunk | AttemptStart]:
    return [
        Chunk(Stream.stdout, b"one\n", 5, 1),
        AttemptStart(2, 9),
        Chunk(Stream.stderr, b"\x00\xff" * 3000, 6, 2),
        Chunk(Stream.stdout, b"", 7, 3),
        Chunk(Stream.stdout, os.urandom(70000), 8, 4),
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 80000), max_size=12))
def test_frames_cut_anywhere_come_out_whole_and_in_order(cuts: list[int]) -> None:
    pieces = _pieces()
    framed = b"".join(map(frame, pieces))
    assert _read_all(framed, cuts) == pieces


def _read_all(framed: bytes, cuts: list[int]) -> list[Chunk | AttemptStart]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    bounds = [*sorted({cut for cut in cuts if 0 < cut < len(framed)}), len(framed)]

    def writer() -> None:
        start = 0
        for end in bounds:
            os.write(write_end, framed[start:end])
            start = end
        os.close(write_end)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        return [item for batch in _frames(read_end) for item in batch]
    finally:
        thread.join(10)
        os.close(read_end)


def test_output_that_ends_inside_a_frame_is_a_protocol_error() -> None:
    framed = frame(Chunk(Stream.stdout, b"whole\n", 1, 1)) + frame(Chunk(Stream.stdout, b"cut off", 2, 2))[:-3]
    with pytest.raises(SjobError) as e:
        _read_all(framed, [10, 40])
    assert e.value.code is ErrorCode.ProtocolError


# Reads scripted exactly (a pipe may merge writes): one byte at a time, a header's size at a time and one byte less,
# or cut at random, over random streams of attempt markers, empty chunks and payloads around a header's size.
CUTS = ("byte", "header", "header-1", "random")
MALFORMED = (
    FRAME.pack(9, 0, 0, 0),  # no such stream
    FRAME.pack(1, MAX_FRAME_DATA + 1, 0, 0),  # longer than a frame may be
    FRAME.pack(2, 0xFFFFFFFF, 0, 0),
    FRAME.pack(FRAME_ATTEMPT, 1, 0, 0),  # an attempt marker has no bytes
)


def _random_items(rng: random.Random) -> list[Chunk | AttemptStart]:
    items: list[Chunk | AttemptStart] = []
    for seq in range(rng.randint(0, 25)):
        kind = rng.random()
        if kind < 0.15:
            items.append(AttemptStart(seq, rng.randint(0, 2**63)))
        else:
            size = (
                0 if kind < 0.35 else rng.choice([1, FRAME.size - 1, FRAME.size, FRAME.size + 1, rng.randint(0, 5000)])
            )
            items.append(Chunk(rng.choice([Stream.stdout, Stream.stderr]), rng.randbytes(size), seq, seq))
    return items


def _cut(data: bytes, rng: random.Random, how: str) -> list[bytes]:
    step = {"byte": 1, "header": FRAME.size, "header-1": FRAME.size - 1}.get(how)
    if step is None:
        bounds = sorted({rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.randint(0, 30))} | {len(data)})
        return [data[start:end] for start, end in itertools.pairwise([0, *bounds]) if end > start]
    return [data[i : i + step] for i in range(0, len(data), step)]


def _scripted(
    monkeypatch: pytest.MonkeyPatch, reads: list[bytes], then: bytes | None = b""
) -> Iterator[Chunk | AttemptStart]:
    """_frames over `reads`, then the end of the stream (or, with then=None, a failure: it must not read again)."""
    pending = iter(reads)

    def read(_fd: int, size: int) -> bytes:
        piece = next(pending, then)
        assert piece is not None, "_frames read on after a malformed header was complete"
        assert len(piece) <= size
        return piece

    monkeypatch.setattr("supervisor.client.os.read", read)
    monkeypatch.setattr("supervisor.client.wait_readable", lambda _fd: None)
    return (item for batch in _frames(-1) for item in batch)


@pytest.mark.parametrize("how", CUTS)
def test_streams_read_in_any_pieces_come_out_whole_and_cut_ones_fail(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    rng = random.Random(how)  # noqa: S311 - reproducible streams, not secrets
    for _ in range(40 if how == "byte" else 150):
        items = _random_items(rng)
        data = b"".join(map(frame, items))
        assert list(_scripted(monkeypatch, _cut(data, rng, how))) == items
        cut_short = (data + frame(Chunk(Stream.stdout, b"x" * 50, 1, 1)))[:-1]
        with pytest.raises(SjobError) as e:
            list(_scripted(monkeypatch, _cut(cut_short, rng, how)))
        assert e.value.code is ErrorCode.ProtocolError


@pytest.mark.parametrize("how", CUTS)
@pytest.mark.parametrize("header", MALFORMED)
def test_a_malformed_header_fails_as_soon_as_it_is_whole(
    monkeypatch: pytest.MonkeyPatch, header: bytes, how: str
) -> None:
    rng = random.Random(header + how.encode())  # noqa: S311
    for _ in range(30):
        data = b"".join(map(frame, _random_items(rng))) + header
        with pytest.raises(SjobError) as e:
            list(_scripted(monkeypatch, _cut(data, rng, how), then=None))
        assert e.value.code is ErrorCode.ProtocolError
