"""sjobd's Varlink server: the io.sjob.Jobs interface on a Unix socket, one principal per connection.

Each accepted connection is identified once, in the kernel's words (see peer), and gets its own interface object
bound to that principal: nothing a client sends can change who it is, except a valid token (`Authenticate`), which
makes the connection that token's principal.

A client cannot stall others: a request must arrive whole within REQUEST_TIMEOUT and within MAX_MESSAGE bytes, and
one user (by kernel uid) may hold at most MAX_CONNECTIONS_PER_USER connections (MAX_CONNECTIONS in all).

Every method maps `SjobError` to the Varlink error `io.sjob.Jobs.<code>` with `message` and `hint`; any other
exception is a bug, logged with its traceback and answered with `InternalError`, and the server carries on. A
connection that closes, or half-closes, cancels its streaming calls so an abandoned `Follow` does not hold a
journal reader open.

No `from __future__ import annotations`: asyncvarlink derives the interface from runtime annotations.
"""

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import select
import socket
import time
import typing
from collections.abc import AsyncIterator

from asyncvarlink import (
    FileDescriptor,
    FileDescriptorArray,
    LastResult,
    TypedVarlinkErrorReply,
    VarlinkInterface,
    VarlinkInterfaceRegistry,
    VarlinkInterfaceServerProtocol,
    VarlinkMethodCall,
    VarlinkTransport,
    varlinkmethod,
)
from asyncvarlink.serviceinterface import InvalidParameter, VarlinkServiceInterface

import supervisor
from supervisor.access import Access
from supervisor.audit import AuditEntry
from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError
from supervisor.jobs import JobService
from supervisor.peer import identify, refuse_peer
from supervisor.protocol import (
    INTERFACE,
    Chunk,
    FollowReply,
    IssuedToken,
    Job,
    JobSpec,
    Output,
    Stream,
    TokenInfo,
    frame,
    parse_signal,
)
from supervisor.tokens import TokenRecord

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024 * 1024  # a request larger than this is refused and the connection closed
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its last
MAX_CONNECTIONS_PER_USER = 32
MAX_CONNECTIONS = 1024
PIPE_SIZE = 1 << 20  # FollowPipe's pipe buffer: fewer wake-ups for a fast reader (best effort)
ACCEPT_RETRY = 1.0  # seconds without accepting after accept() failed for want of resources (EMFILE)
HANGUP_CHECK = 1.0  # seconds between checks whether the client of a stream is still there


class ErrorParameters(typing.TypedDict):
    message: str
    hint: str | None


def _error_class(code: ErrorCode) -> type[TypedVarlinkErrorReply]:
    cls = type(code.value, (TypedVarlinkErrorReply,), {"Parameters": ErrorParameters}, interface=INTERFACE)
    return typing.cast(type[TypedVarlinkErrorReply], cls)


# The errors a client can receive; client-side-only codes are not part of the interface.
ERRORS: dict[ErrorCode, type[TypedVarlinkErrorReply]] = {
    code: _error_class(code)
    for code in ErrorCode
    if code not in (ErrorCode.NotConnected, ErrorCode.ProtocolError, ErrorCode.ExecutableNotFound)
}


class PipeReply(typing.TypedDict, total=False):
    """One reply of FollowPipe: first the pipe the output comes through, last of all the finished job."""

    pipe: FileDescriptor
    job: Job


async def _write_all(fd: int, data: bytes) -> bool:
    """Write all of `data` to a non-blocking pipe, waiting while it is full; False if its reader is gone."""
    view = memoryview(data)
    loop = asyncio.get_running_loop()
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(fd, writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(fd)
        except BrokenPipeError:
            return False
    return True


def varlink_error(e: SjobError) -> TypedVarlinkErrorReply:
    cls = ERRORS.get(e.code, ERRORS[ErrorCode.InternalError])
    return cls(message=e.message, hint=e.hint)


class JobsInterface(VarlinkInterface, name=INTERFACE):
    """Run commands as transient systemd services and read their output back from journald."""

    errors = tuple(ERRORS.values())

    def __init__(self, service: JobService, access: Access, principal: Principal) -> None:
        self._service = service
        self._access = access
        self._principal = principal

    @varlinkmethod(return_parameter="principal")
    def Authenticate(self, token: str) -> str:  # noqa: N802
        """Act as the principal of `token` (a JWT from `sjob token issue`) for the rest of this connection."""
        try:
            self._principal = self._access.authenticate(self._principal, token, time.time_ns() // 1000)
        except SjobError as e:
            raise varlink_error(e) from None
        return str(self._principal)

    @varlinkmethod(return_parameter="issued")
    def IssueToken(  # noqa: N802
        self, subject: str, scope: list[str] | None = None, ttl_usec: int | None = None
    ) -> IssuedToken:
        """Issue a token for `subject` allowing `scope` (default: all job actions) for `ttl_usec` (admins only)."""
        try:
            token, record = self._access.issue_token(
                self._principal, subject, frozenset(scope) if scope else None, ttl_usec, time.time_ns() // 1000
            )
        except SjobError as e:
            raise varlink_error(e) from None
        return IssuedToken(token, _token_info(record))

    @varlinkmethod(return_parameter="tokens")
    def ListTokens(self) -> list[TokenInfo]:  # noqa: N802
        """Every token issued, newest first (admins only)."""
        try:
            return [_token_info(r) for r in self._access.list_tokens(self._principal)]
        except SjobError as e:
            raise varlink_error(e) from None

    @varlinkmethod(return_parameter="token")
    def RevokeToken(self, id: str) -> TokenInfo:  # noqa: N802
        """Revoke a token by its id: it is refused from now on (admins only)."""
        try:
            return _token_info(self._access.revoke_token(self._principal, id, time.time_ns() // 1000))
        except SjobError as e:
            raise varlink_error(e) from None

    @varlinkmethod(return_parameter="job")
    async def Start(self, spec: JobSpec) -> Job:  # noqa: N802 - Varlink method names are CamelCase
        """Start a job as the calling user; returns once systemd has executed it (or says why it could not)."""
        try:
            return await self._service.start(self._principal, spec)
        except SjobError as e:
            raise varlink_error(e) from None

    # delay_generator=False: asyncvarlink otherwise holds each reply back until the next one exists (to know
    # whether it "continues"), so a job's line would reach the client only when the job wrote another.
    @varlinkmethod(delay_generator=False)
    async def Follow(  # noqa: N802
        self,
        id: str,
        wait: bool = True,
        streams: list[Stream] | None = None,
        after_seq: int = 0,
    ) -> AsyncIterator[FollowReply]:
        """Stream a job's output from its very start, or after the record numbered `after_seq`; the last reply
        carries the job, once it has ended (or, with wait=false, as it is when the output written so far has been
        sent). `streams` selects stdout/stderr."""
        try:
            follow = self._service.follow(self._principal, id, wait=wait, streams=streams, after_seq=after_seq)
            async with contextlib.aclosing(follow):
                async for item in follow:
                    if isinstance(item, Chunk):
                        yield FollowReply(output=Output.of(item))
                    else:
                        raise LastResult(FollowReply(job=item))  # the one reply that does not continue
        except SjobError as e:
            raise varlink_error(e) from None
        raise varlink_error(SjobError(ErrorCode.InternalError, f"the output of job {id} ended without its state"))

    @varlinkmethod(delay_generator=False)
    async def FollowPipe(  # noqa: N802
        self,
        id: str,
        wait: bool = True,
        streams: list[Stream] | None = None,
        after_seq: int = 0,
    ) -> AsyncIterator[PipeReply]:
        """Follow, with the output through a pipe instead of JSON: the first reply carries the pipe's read end
        (a file descriptor, as systemd's Varlink passes them), the output arrives there as frames (a header of
        stream, length, seq and usec, then the bytes as the job wrote them), and once the pipe is closed the last
        reply carries the job. For clients that can receive file descriptors: no base64, no JSON per piece."""
        try:
            follow = self._service.follow(self._principal, id, wait=wait, streams=streams, after_seq=after_seq)
            async with contextlib.aclosing(follow):
                item = await anext(follow)  # the job is found, and may be read, before any pipe exists
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(write_end, False)  # the client reads its end blocking
                try:
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                    # Sent before this generator resumes; then the client holds the only read end.
                    yield PipeReply(pipe=FileDescriptor(read_end))
                    os.close(read_end)
                    read_end = -1
                    while isinstance(item, Chunk):
                        if not await _write_all(write_end, frame(item)):
                            raise LastResult(PipeReply())  # the client closed the pipe: it is gone
                        item = await anext(follow)
                finally:
                    for fd in (read_end, write_end):
                        if fd >= 0:
                            os.close(fd)
                raise LastResult(PipeReply(job=item))  # after the pipe's end: the client has read all output
        except StopAsyncIteration:
            pass
        except SjobError as e:
            raise varlink_error(e) from None
        raise varlink_error(SjobError(ErrorCode.InternalError, f"the output of job {id} ended without its state"))

    @varlinkmethod(return_parameter="job")
    async def Status(self, id: str) -> Job:  # noqa: N802
        """Describe one of the caller's jobs."""
        try:
            return await self._service.status(self._principal, id)
        except SjobError as e:
            raise varlink_error(e) from None

    @varlinkmethod(return_parameter="jobs")
    def List(self, all: bool = False, running: bool = False) -> list[Job]:  # noqa: N802
        """The caller's jobs, newest first: only running ones with `running`, everyone's with `all` (root)."""
        try:
            return self._service.list_jobs(self._principal, everyone=all, running=running)
        except SjobError as e:
            raise varlink_error(e) from None

    @varlinkmethod(return_parameter="job")
    async def Stop(  # noqa: N802
        self,
        id: str,
        signal: str | None = None,
        grace_usec: int | None = None,
    ) -> Job:
        """Stop a job: SIGTERM to all its processes, SIGKILL after grace_usec (default 90 s). With `signal`
        (TERM, HUP, USR1, 9, ...) only send that signal. Returns at once; a finished job is left as it is."""
        try:
            signo = parse_signal(signal) if signal is not None else None
            return await self._service.stop(self._principal, id, signo=signo, grace_usec=grace_usec)
        except SjobError as e:
            raise varlink_error(e) from None


class Connection(VarlinkInterfaceServerProtocol):
    """One client connection: size limit, cancellation of its streaming calls, and error logging."""

    def __init__(self, registry: VarlinkInterfaceRegistry, principal: Principal, fd: int) -> None:
        super().__init__(registry)
        self._principal = principal
        self._fd = fd
        self._watchdog: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Future[None]] = set()
        self._pending: list[bytes] = []  # the start of a request whose NUL has not arrived yet
        self._pending_size = 0
        self._deadline: asyncio.TimerHandle | None = None  # when the pending request must be complete

    def message_received(self, data: bytes, fds: FileDescriptorArray | None) -> None:
        # Requests are passed on only once complete (NUL-terminated), within MAX_MESSAGE, and valid UTF-8:
        # asyncvarlink buffers without limit and does not survive undecodable bytes.
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
        super().message_received(complete, fds)

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
        self.close()

    def error_received(self, err: Exception, data: bytes, fds: FileDescriptorArray | None) -> None:
        self._refuse(ErrorCode.InvalidArgument, f"malformed request: not a JSON object ({type(err).__name__})")

    def call_received(self, call: VarlinkMethodCall, fds: FileDescriptorArray | None) -> asyncio.Future[None] | None:
        if fds:
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


def _token_info(record: TokenRecord) -> TokenInfo:
    return TokenInfo(
        record.token_id,
        record.subject,
        list(record.scope),
        record.issued_by,
        record.issued_usec,
        record.expires_usec,
        record.revoked_usec,
        record.revoked_by,
    )


class Server:
    """Accepts connections on a listening Unix socket and serves io.sjob.Jobs on each."""

    def __init__(self, service: JobService, access: Access, sock: socket.socket) -> None:
        self._service = service
        self._access = access
        self._sock = sock
        self._transports: set[VarlinkTransport] = set()
        self._per_user: dict[int, int] = {}  # kernel uid -> open connections

    def start(self) -> None:
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock, self._accept)

    def _resume_accepting(self) -> None:
        if self._sock.fileno() >= 0:  # not closed by a shutdown meanwhile
            asyncio.get_running_loop().add_reader(self._sock, self._accept)

    def stop_accepting(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock)

    async def close(self, timeout: float) -> None:
        """Stop accepting, let in-flight calls finish for up to `timeout` seconds, then drop every client."""
        self.stop_accepting()
        waits = [t.closed_future for t in self._transports]
        for transport in list(self._transports):
            transport.get_protocol().eof_received()  # cancel streams; finish the rest, then close
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            if pending:
                log.warning("%d connections did not finish within %.0fs; closing them", len(pending), timeout)
        for transport in list(self._transports):
            transport.abort()
        self._sock.close()  # our copy only: under socket activation systemd keeps listening for the next sjobd

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # EMFILE and the like: the pending connection stays in the backlog, so the socket stays readable and
            # this callback would run again at once, forever (a busy loop that starves every client). Stop
            # listening for ACCEPT_RETRY seconds, as asyncio's own servers do, and keep serving the connections
            # we have.
            log.error("accept failed: %s; accepting again in %.0fs", e, ACCEPT_RETRY)
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sock)
            loop.call_later(ACCEPT_RETRY, self._resume_accepting)
            return
        try:
            peer = identify(conn)
        except OSError as e:
            log.error("cannot identify a peer: %s", e)
            conn.close()
            return
        principal = peer.principal
        if (refusal := refuse_peer(peer)) is not None:
            self._turn_away(conn, principal, refusal)
            return
        held = self._per_user.get(principal.uid, 0)
        if held >= MAX_CONNECTIONS_PER_USER or len(self._transports) >= MAX_CONNECTIONS:
            if held >= MAX_CONNECTIONS_PER_USER:
                message = f"{principal.user} already has {held} connections to sjobd, the most allowed"
            else:
                message = f"sjobd already serves {len(self._transports)} connections, the most it allows"
            hint = "close some (e.g. idle 'sjob logs -f')"
            self._turn_away(conn, principal, SjobError(ErrorCode.TooManyConnections, message, hint=hint))
            return
        self._per_user[principal.uid] = held + 1
        conn.setblocking(False)
        registry = VarlinkInterfaceRegistry()
        registry.register_interface(JobsInterface(self._service, self._access, principal))
        registry.register_interface(
            VarlinkServiceInterface("sjob", "sjobd", supervisor.__version__, "https://github.com/sjob/sjob", registry)
        )
        protocol = Connection(registry, principal, conn.fileno())
        transport = VarlinkTransport(asyncio.get_running_loop(), conn, conn, protocol)
        self._transports.add(transport)
        transport.closed_future.add_done_callback(lambda _: self._closed(transport, principal.uid))

    def _closed(self, transport: VarlinkTransport, uid: int) -> None:
        self._transports.discard(transport)
        if (left := self._per_user.get(uid, 1) - 1) > 0:
            self._per_user[uid] = left
        else:
            self._per_user.pop(uid, None)

    def _turn_away(self, conn: socket.socket, principal: Principal, error: SjobError) -> None:
        """Refuse a connection: audit it, one error reply (if the socket takes it at once), then close."""
        self._access.audit(AuditEntry(principal, "connect", False, error.message))
        reply = {
            "error": f"{INTERFACE}.{error.code.value}",
            "parameters": {"message": error.message, "hint": error.hint},
        }
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(json.dumps(reply).encode() + b"\0")
        conn.close()
