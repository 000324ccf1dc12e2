"""PipeWriter: every byte in order, few writes, a slow reader slows the writer, a vanished reader stops it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

from supervisor import pipewriter
from supervisor.pipewriter import PipeWriter


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)
    return read_end, write_end


class _Reader(threading.Thread):
    def __init__(self, fd: int, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.fd, self.delay = fd, delay
        self.data = bytearray()
        self.reads = 0

    def run(self) -> None:
        while chunk := os.read(self.fd, 1 << 20):
            self.data += chunk
            self.reads += 1
            time.sleep(self.delay)
        os.close(self.fd)


def test_pieces_added_in_one_turn_go_out_together_and_in_order() -> None:
    read_end, write_end = _pipe()
    reader = _Reader(read_end)
    reader.start()
    pieces = [bytes([i % 256]) * 4096 for i in range(64)]

    async def send() -> None:
        pipe = PipeWriter(write_end)
        for piece in pieces:
            assert await pipe.write(piece)  # under HIGH_WATER: no turn of the loop in between
        assert await pipe.drain()
        pipe.close()

    asyncio.run(send())
    os.close(write_end)
    reader.join(10)
    assert bytes(reader.data) == b"".join(pieces)
    assert reader.reads <= 8, f"{reader.reads} reads for 64 pieces written in one turn of the loop"


def test_a_slow_reader_gets_every_byte_and_the_writer_waits_for_it() -> None:
    read_end, write_end = _pipe()
    reader = _Reader(read_end, delay=0.01)
    reader.start()
    data = os.urandom(6 << 20)
    most_queued = 0

    class Watched(PipeWriter):
        def _flush(self) -> None:  # the queue is at its largest just before each flush
            nonlocal most_queued
            most_queued = max(most_queued, self.queued)
            super()._flush()

    async def send() -> None:
        pipe = Watched(write_end)
        for offset in range(0, len(data), 65536):  # a piece as a frame is: a header, then its bytes
            assert await pipe.write(data[offset : offset + 25], data[offset + 25 : offset + 65536])
        assert await pipe.drain()
        pipe.close()

    asyncio.run(send())
    os.close(write_end)
    reader.join(30)
    assert hashlib.sha256(reader.data).digest() == hashlib.sha256(data).digest()
    assert most_queued <= pipewriter.HIGH_WATER, "the writer queued past its high water mark"


def test_a_reader_that_goes_away_stops_the_writer_without_an_error() -> None:
    read_end, write_end = _pipe()
    os.close(read_end)

    async def send() -> tuple[bool, bool, bool]:
        pipe = PipeWriter(write_end)
        first = await pipe.write(b"x" * 100)
        await asyncio.sleep(0)  # the loop turns: the write fails with EPIPE
        later = await pipe.write(b"y")
        drained = await pipe.drain()
        pipe.close()
        return first, later, drained

    first, later, drained = asyncio.run(send())
    os.close(write_end)
    assert first is True  # queued before anyone knew
    assert later is False
    assert drained is False


def test_a_live_piece_is_written_before_the_writer_waits_for_the_next() -> None:
    """A follower must not wait for a batch to fill: a piece added, then a wait (the journal reader waiting for
    more output), and the piece is already in the pipe."""
    read_end, write_end = _pipe()

    async def send() -> bytes:
        pipe = PipeWriter(write_end)
        await pipe.write(b"a line\n")
        await asyncio.sleep(0.05)  # waiting for the job's next line
        got = os.read(read_end, 100)
        pipe.close()
        return got

    assert asyncio.run(send()) == b"a line\n"
    os.close(read_end)
    os.close(write_end)


def test_tiny_pieces_for_a_reader_that_stopped_cost_what_they_hold() -> None:
    """A job that writes a byte at a time, followed by a reader that never reads: the queue holds HIGH_WATER of
    bytes in a few buffers, not a Python object for each byte (review of H: five times HIGH_WATER)."""
    read_end, write_end = _pipe()
    queued: list[int] = []

    async def send() -> None:
        pipe = PipeWriter(write_end)

        async def flood() -> None:
            while True:
                await pipe.write(b"h" * 21, b"x")  # a frame's header and one byte of output

        task = asyncio.create_task(flood())
        async with asyncio.timeout(10):  # the pipe's buffer fills, then the queue up to HIGH_WATER: write() waits
            while pipe.queued + 22 <= pipewriter.HIGH_WATER:
                await asyncio.sleep(0.01)
        queued.extend((pipe.queued, len(pipe._pending)))
        task.cancel()
        pipe.close()

    asyncio.run(send())
    os.close(read_end)
    os.close(write_end)
    size, pieces = queued
    assert pipewriter.HIGH_WATER - 22 < size <= pipewriter.HIGH_WATER
    assert pieces <= pipewriter.HIGH_WATER // pipewriter.COALESCED + 2, f"{pieces} objects queued for {size} bytes"
