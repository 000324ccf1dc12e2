"""Writing a stream of small pieces into a non-blocking pipe in as few writes as the event loop allows.

FollowPipe sends a job's output as frames, one per journal entry (often 4 KiB each). One write() per frame made the
syscalls a quarter of what sjobd spent serving `sjob logs` of a large job, and the client's reads as many. Here
what is added before the event loop's next turn goes out in one write. The journal reader gives the loop a turn
at least every READ_BATCH entries and whenever it waits for more, so a live follower gets each piece as soon as
before: nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

HIGH_WATER = 256 * 1024  # the most bytes queued per reader (beyond the pipe's own buffer): what a slow one costs


class PipeWriter:
    """Queues bytes for `fd` (non-blocking, owned by the caller) and writes them when the loop next turns, or when
    the pipe has room again. Once the reader has gone (EPIPE), everything is dropped and `gone` is true."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending = bytearray()
        self._scheduled = False  # a _flush is due at the loop's next turn
        self._watching = False  # the loop calls _flush when the pipe is writable
        self._progress = asyncio.Event()
        self.gone = False

    async def write(self, data: bytes) -> bool:
        """Queue `data`, first waiting until it fits under HIGH_WATER (or the queue is empty: a piece larger than
        HIGH_WATER goes alone). False once the reader is gone."""
        await self._until(lambda: self.gone or not self._pending or len(self._pending) + len(data) <= HIGH_WATER)
        if self.gone:
            return False
        self._pending += data
        if not self._scheduled and not self._watching:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return True

    async def drain(self) -> bool:
        """Wait until everything queued is written. False if the reader went away first."""
        await self._until(lambda: self.gone or not self._pending)
        return not self.gone

    def close(self) -> None:
        """Stop writing (the caller closes the descriptor); what is still queued is dropped."""
        self._unwatch()
        self._pending.clear()
        self.gone = True

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
                written = os.write(self._fd, self._pending)
                del self._pending[:written]
        except BlockingIOError:
            if not self._watching:
                self._loop.add_writer(self._fd, self._flush)
                self._watching = True
            self._progress.set()
            return
        except OSError:  # EPIPE: the reader closed its end; anything else: the pipe is no use either
            self._pending.clear()
            self.gone = True
        self._unwatch()
        self._progress.set()

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False
