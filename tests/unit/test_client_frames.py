"""The client's side of FollowPipe: frames come out whole and in order however the reads cut them."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.client import _frames
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import AttemptStart, Chunk, Stream, frame


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
