"""Writing a stream of small pieces into a non-blocking pipe in as few writes as the event loop allows.

FollowPipe sends a job's output as frames, one per journal entry (often 4 KiB each). One write() per frame made the
syscalls a quarter of what sjobd spent serving `sjob logs` of a large job, and the client's reads as many. Here
what is added before the event loop's next turn goes out in one write. The journal reader gives the loop a turn
at least every READ_BATCH entries and whenever it waits for more, so a live follower gets each piece as soon as
before: nothing waits for a batch to fill.

Large pieces are queued as they are and go out with writev(), not copied first into one buffer. Small ones (a
frame's header, a short line) are copied together: queued one by one, a job that writes a byte at a time made each
byte cost a hundred in Python objects, so a reader that stopped reading held five times HIGH_WATER (review of H).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
from collections.abc import Callable

HIGH_WATER = 256 * 1024  # the most bytes queued per reader (beyond the pipe's own buffer): what a slow one costs
IOV_MAX = 1024  # pieces per writev(); Linux's limit
SMALL = 4096  # pieces shorter than this are copied into a shared buffer of up to COALESCED bytes
COALESCED = 64 * 1024


class PipeWriter:
    """Queues bytes for `fd` (non-blocking, owned by the caller) and writes them when the loop next turns, or when
    the pipe has room again. Once the reader has gone (EPIPE), everything is dropped and `gone` is true."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending: collections.deque[bytes | bytearray | memoryview] = collections.deque()
        self.queued = 0  # bytes in _pending
        self._scheduled = False  # a _flush is due at the loop's next turn
        self._watching = False  # the loop calls _flush when the pipe is writable
        self._progress = asyncio.Event()
        self.gone = False

    async def write(self, *pieces: bytes) -> bool:
        """Queue `pieces`, to go out one after the other, first waiting until they fit under HIGH_WATER (or the
        queue is empty: pieces larger than HIGH_WATER go alone). They must not change until written. False once the
        reader is gone."""
        size = sum(map(len, pieces))
        await self._until(lambda: self.gone or not self.queued or self.queued + size <= HIGH_WATER)
        if self.gone:
            return False
        pending = self._pending
        for piece in pieces:
            if len(piece) >= SMALL:
                pending.append(piece)
            elif piece:
                tail = pending[-1] if pending else None
                # Only a bytearray this writer made is grown; a head cut by a partial write is a memoryview.
                if type(tail) is bytearray and len(tail) + len(piece) <= COALESCED:
                    tail += piece
                else:
                    pending.append(bytearray(piece))
        self.queued += size
        if not self._scheduled and not self._watching:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return True

    async def drain(self) -> bool:
        """Wait until everything queued is written. False if the reader went away first."""
        await self._until(lambda: self.gone or not self.queued)
        return not self.gone

    def close(self) -> None:
        """Stop writing (the caller closes the descriptor); what is still queued is dropped."""
        self._unwatch()
        self._drop()
        self.gone = True

    def _drop(self) -> None:
        self._pending.clear()
        self.queued = 0

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._progress.clear()
            await self._progress.wait()

    def _flush(self) -> None:
        self._scheduled = False
        if self.gone:
            return
        try:
            while self._pending:
                self._consume(os.writev(self._fd, list(itertools.islice(self._pending, IOV_MAX))))
        except BlockingIOError:
            if not self._watching:
                self._loop.add_writer(self._fd, self._flush)
                self._watching = True
            self._progress.set()
            return
        except OSError:  # EPIPE: the reader closed its end; anything else: the pipe is no use either
            self._drop()
            self.gone = True
        self._unwatch()
        self._progress.set()

    def _consume(self, written: int) -> None:
        """Take the first `written` bytes off the queue."""
        self.queued -= written
        pending = self._pending
        while written:
            head = pending[0]
            if len(head) > written:
                pending[0] = memoryview(head)[written:]
                return
            written -= len(head)
            pending.popleft()

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False
