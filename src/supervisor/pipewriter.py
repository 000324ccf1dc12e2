"""Writing a stream of small pieces into a non-blocking pipe in as few writes as the event loop allows.

FollowPipe sends a job's output as frames, one per journal entry (often 4 KiB each). One write() per frame made the
syscalls a quarter of what sjobd spent serving `sjob logs` of a large job, and the client's reads as many. Here
what is added before the event loop's next turn goes out in one write. The journal reader gives the loop a turn
at least every READ_BATCH entries and whenever it waits for more, so a live follower gets each piece as soon as
before: nothing waits for a batch to fill.

The pieces are queued as they are and go out with writev(): copying them into one buffer first (a frame's header
and its bytes, then the frame into the queue) cost sjobd as much as reading them from the journal, in the test VM
(`sjob logs` of 20 MB: two copies of every byte before the kernel's own).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
from collections.abc import Callable

HIGH_WATER = 256 * 1024  # the most bytes queued per reader (beyond the pipe's own buffer): what a slow one costs
IOV_MAX = 1024  # pieces per writev(); Linux's limit


class PipeWriter:
    """Queues bytes for `fd` (non-blocking, owned by the caller) and writes them when the loop next turns, or when
    the pipe has room again. Once the reader has gone (EPIPE), everything is dropped and `gone` is true."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending: collections.deque[bytes | memoryview] = collections.deque()
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
        self._pending.extend(piece for piece in pieces if piece)
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
