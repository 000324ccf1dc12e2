"""One client connection to sjobd, guarded: a request must arrive whole within REQUEST_TIMEOUT and within MAX_MESSAGE
bytes (asyncvarlink would buffer without limit), so a client cannot stall others. A connection that closes, or
half-closes, cancels its streaming calls so an abandoned `Follow` does not hold a journal reader open. An exception
other than `SjobError` in a method is a bug: it is logged with its traceback and answered with `InternalError`, and
the server carries on. File descriptors (SCM_RIGHTS) are taken only with the methods that declare them, at most
MAX_FDS per request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select

from asyncvarlink import (
    FileDescriptor,
    FileDescriptorArray,
    VarlinkInterfaceRegistry,
    VarlinkInterfaceServerProtocol,
    VarlinkMethodCall,
)
from asyncvarlink.serviceinterface import InvalidParameter

from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError
from supervisor.fnprotocol import Method as FnMethod
from supervisor.interface import varlink_error
from supervisor.protocol import Method

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024 * 1024  # a request larger than this is refused and the connection closed
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its last
HANGUP_CHECK = 1.0  # seconds between checks whether the client of a stream is still there
MAX_FDS = 2  # file descriptors a request may pass: a job's stdin, and its terminal's output
TAKES_FDS = frozenset({Method.Start.value, FnMethod.Call.value})  # the methods that take any


class Connection(VarlinkInterfaceServerProtocol):
    """One client connection: size and time limits on requests, cancellation of its streaming calls, error logging."""

    def __init__(self, registry: VarlinkInterfaceRegistry, principal: Principal, fd: int) -> None:
        super().__init__(registry)
        self._principal = principal
        self._fd = fd
        self._watchdog: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Future[None]] = set()
        self._pending: list[bytes] = []  # the start of a request whose NUL has not arrived yet
        self._pending_size = 0
        self._pending_fds: list[int] = []  # descriptors passed with the pending request (our copies)
        self._deadline: asyncio.TimerHandle | None = None  # when the pending request must be complete

    def message_received(self, data: bytes, fds: FileDescriptorArray | None) -> None:
        # Requests are passed on only once complete (NUL-terminated), within MAX_MESSAGE, and valid UTF-8:
        # asyncvarlink buffers without limit and does not survive undecodable bytes.
        if fds:
            # Passed descriptors arrive with the first bytes of their request, which may be read in pieces: keep
            # them (our own copies; asyncvarlink closes its own) until the request is complete. At most MAX_FDS.
            for received in fds:
                if received:
                    self._pending_fds.append(os.dup(received.fileno()))
            if len(self._pending_fds) > MAX_FDS:
                self._refuse(ErrorCode.InvalidArgument, f"more than {MAX_FDS} file descriptors passed with a request")
                return
        end = data.rfind(b"\0")
        if end < 0:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > MAX_MESSAGE:
                self._refuse(ErrorCode.RequestTooLarge, f"request larger than {MAX_MESSAGE} bytes")
            elif self._deadline is None:
                self._deadline = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._too_slow)
            return
        complete = b"".join([*self._pending, data[: end + 1]])
        rest = data[end + 1 :]
        self._pending, self._pending_size = ([rest], len(rest)) if rest else ([], 0)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if rest:
            self._deadline = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._too_slow)
        for request in complete[:-1].split(b"\0"):
            if len(request) > MAX_MESSAGE:
                self._refuse(ErrorCode.RequestTooLarge, f"request larger than {MAX_MESSAGE} bytes")
                return
            try:
                request.decode("utf-8")
            except UnicodeDecodeError:
                self._refuse(ErrorCode.InvalidArgument, "malformed request: not UTF-8 JSON")
                return
        if not self._pending_fds:
            super().message_received(complete, None)
            return
        # The descriptors belong to the request(s) completed here; asyncvarlink holds them until those are done.
        with FileDescriptorArray.new_managed() as passed:
            for number in self._pending_fds:
                passed.add(FileDescriptor(number, should_close=True))
            self._pending_fds = []
            super().message_received(complete, passed)

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(ErrorCode.RequestTimeout, f"request not complete within {REQUEST_TIMEOUT:g}s")

    def _refuse(self, code: ErrorCode, message: str) -> None:
        # Never log what a misbehaving peer sent; say what kind of trouble it was.
        log.warning("closing connection of %s: %s", self._principal, message)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.send_error(varlink_error(SjobError(code, message + "; closing the connection")))
        self._pending, self._pending_size = [], 0
        self._close_pending_fds()
        self.close()

    def _close_pending_fds(self) -> None:
        for fd in self._pending_fds:
            os.close(fd)
        self._pending_fds = []

    def error_received(self, err: Exception, data: bytes, fds: FileDescriptorArray | None) -> None:
        self._refuse(ErrorCode.InvalidArgument, f"malformed request: not a JSON object ({type(err).__name__})")

    def call_received(self, call: VarlinkMethodCall, fds: FileDescriptorArray | None) -> asyncio.Future[None] | None:
        if fds and call.method not in TAKES_FDS:
            raise InvalidParameter(parameter="fds")
        task: asyncio.Future[None] | None = super().call_received(call, fds)
        if task is None or not call.more:
            return task
        # Hand asyncvarlink a future that completes normally even when we cancel the call ourselves.
        outer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(t: asyncio.Future[None]) -> None:
            self._streams.discard(t)
            if outer.done():
                return
            if t.cancelled():
                outer.set_result(None)
            elif (exc := t.exception()) is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(None)

        self._streams.add(task)
        task.add_done_callback(done)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch_peer())
        return outer

    async def _watch_peer(self) -> None:
        """Cancel our streams once the peer hangs up. While a call runs, asyncvarlink stops reading the socket, so
        a quiet stream would never notice a dead client; POLLRDHUP tells without consuming anything."""
        poller = select.poll()
        poller.register(self._fd, select.POLLRDHUP)
        while self._streams:
            await asyncio.sleep(HANGUP_CHECK)
            if any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0)):
                self._cancel_streams()
                return

    def eof_received(self) -> None:
        # A client that stops sending is gone as far as streams are concerned (a dead process looks like this
        # until we next write to it).
        self._cancel_streams()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_pending_fds()
        self._cancel_streams()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        super().connection_lost(exc)

    def _cancel_streams(self) -> None:
        for task in list(self._streams):
            task.cancel()

    def handle_call_exception(self, exc: BaseException, oneway: bool) -> None:
        log.error("internal error serving %s", self._principal, exc_info=exc)
        if not oneway:
            self.send_error(
                varlink_error(SjobError(ErrorCode.InternalError, "sjobd hit an internal error; see its log"))
            )
