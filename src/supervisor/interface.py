"""The io.sjob.Jobs Varlink interface sjobd serves: one method per request, each passing it to the job service or
to access (tokens) as the connection's principal, and the Varlink errors a client can receive. One JobsInterface
object serves one connection: nothing a client sends can change who it is, except a valid token (`Authenticate`),
which makes the connection that token's principal.

Every method answers an `SjobError` with the Varlink error `io.sjob.Jobs.<code>` (its `message` and `hint`), through
one decorator, `answers_sjob_errors`.

No `from __future__ import annotations`: asyncvarlink derives the interface from runtime annotations.
"""

import asyncio
import contextlib
import fcntl
import functools
import inspect
import os
import time
import typing
from collections.abc import AsyncIterator, Callable

from asyncvarlink import FileDescriptor, LastResult, TypedVarlinkErrorReply, VarlinkInterface, varlinkmethod

from supervisor import stdio
from supervisor.access import Access
from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError, invalid_argument
from supervisor.jobs import JobService
from supervisor.pipewriter import PipeWriter
from supervisor.properties import JobStdio
from supervisor.protocol import (
    INTERFACE,
    AttemptStart,
    Chunk,
    Input,
    IssuedToken,
    Job,
    JobSpec,
    JobUsage,
    Output,
    Stream,
    Timer,
    TokenInfo,
    frame_parts,
    parse_signal,
)
from supervisor.protocol import Schedule as TimerSchedule  # a method is named Schedule
from supervisor.timers import TimerService
from supervisor.tokens import TokenRecord

DRAIN_ON_ERROR = 5.0  # seconds FollowPipe waits for a client to read what is queued before it reports an error
PIPE_SIZE = 1 << 20  # FollowPipe's pipe buffer: fewer wake-ups for a fast reader (best effort)


class ErrorParameters(typing.TypedDict):
    message: str
    hint: str | None


Errors = dict[ErrorCode, type[TypedVarlinkErrorReply]]


def error_classes(interface: str) -> Errors:
    """The errors a client of `interface` can receive, as `<interface>.<code>`; client-side-only codes are not
    part of any interface."""
    local = (ErrorCode.NotConnected, ErrorCode.ProtocolError, ErrorCode.ExecutableNotFound)
    return {
        code: typing.cast(
            type[TypedVarlinkErrorReply],
            type(code.value, (TypedVarlinkErrorReply,), {"Parameters": ErrorParameters}, interface=interface),
        )
        for code in ErrorCode
        if code not in local
    }


ERRORS = error_classes(INTERFACE)


class FollowReply(typing.TypedDict, total=False):
    """One reply of Follow: output as it arrives (and where a retried job's next attempt begins), and last of all
    the finished job."""

    output: Output
    attempt: AttemptStart
    job: Job


class PipeReply(typing.TypedDict, total=False):
    """One reply of FollowPipe: first the pipe the output comes through, last of all the finished job."""

    pipe: FileDescriptor
    job: Job


def varlink_error(e: SjobError, errors: Errors = ERRORS) -> TypedVarlinkErrorReply:
    cls = errors.get(e.code, errors[ErrorCode.InternalError])
    return cls(message=e.message, hint=e.hint)


AnyMethod = typing.TypeVar("AnyMethod", bound=Callable[..., object])


def answering(errors: Errors) -> Callable[[AnyMethod], AnyMethod]:
    """`answers_sjob_errors` for an interface with these `errors`."""
    return functools.partial(answers_sjob_errors, errors=errors)


def answers_sjob_errors(method: AnyMethod, errors: Errors = ERRORS) -> AnyMethod:
    """Answer an `SjobError` raised by `method` (a plain function, a coroutine function or an async generator
    function) with its Varlink error. Goes under @varlinkmethod: asyncvarlink reads the signature and annotations
    (functools.wraps keeps them, through __wrapped__) and asks whether the method is a coroutine or an async
    generator function, so the wrapper is one of the same kind."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(*args: typing.Any, **kwargs: typing.Any) -> AsyncIterator[object]:
            try:
                async with contextlib.aclosing(method(*args, **kwargs)) as replies:
                    async for reply in replies:
                        yield reply
            except SjobError as e:
                raise varlink_error(e, errors) from None

        return typing.cast(AnyMethod, stream)
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def call(*args: typing.Any, **kwargs: typing.Any) -> object:
            try:
                return await method(*args, **kwargs)
            except SjobError as e:
                raise varlink_error(e, errors) from None

        return typing.cast(AnyMethod, call)
    if inspect.isgeneratorfunction(method):
        raise TypeError(f"{method.__qualname__}: a generator method would need a generator wrapper")

    @functools.wraps(method)
    def plain(*args: typing.Any, **kwargs: typing.Any) -> object:
        try:
            return method(*args, **kwargs)
        except SjobError as e:
            raise varlink_error(e, errors) from None

    return typing.cast(AnyMethod, plain)


class JobsInterface(VarlinkInterface, name=INTERFACE):
    """Run commands as transient systemd services and read their output back from journald."""

    errors = tuple(ERRORS.values())

    def __init__(
        self,
        service: JobService,
        access: Access,
        principal: Principal,
        socket_path: str = "",
        authenticated: Callable[[Principal], None] | None = None,
        timers: TimerService | None = None,
    ) -> None:
        self._service = service
        self._timers = timers
        self._access = access
        self._principal = principal
        self._socket_path = socket_path  # where sjobd listens: a job's stdin must not be a connection to it
        self._authenticated = authenticated  # told when a token makes the connection its principal's

    @varlinkmethod(return_parameter="principal")
    @answers_sjob_errors
    def Authenticate(self, token: str) -> str:  # noqa: N802
        """Act as the principal of `token` (a JWT from `sjob token issue`) for the rest of this connection."""
        self._principal = self._access.authenticate(self._principal, token, time.time_ns() // 1000)
        if self._authenticated is not None:
            self._authenticated(self._principal)  # the connection's other interfaces act as it too
        return str(self._principal)

    @varlinkmethod(return_parameter="issued")
    @answers_sjob_errors
    def IssueToken(  # noqa: N802
        self, subject: str, scope: list[str] | None = None, ttl_usec: int | None = None
    ) -> IssuedToken:
        """Issue a token for `subject` allowing `scope` (default: all job actions) for `ttl_usec` (admins only)."""
        token, record = self._access.issue_token(
            self._principal, subject, frozenset(scope) if scope else None, ttl_usec, time.time_ns() // 1000
        )
        return IssuedToken(token, _token_info(record))

    @varlinkmethod(return_parameter="tokens")
    @answers_sjob_errors
    def ListTokens(self) -> list[TokenInfo]:  # noqa: N802
        """Every token issued, newest first (admins only)."""
        return [_token_info(r) for r in self._access.list_tokens(self._principal)]

    @varlinkmethod(return_parameter="token")
    @answers_sjob_errors
    def RevokeToken(self, id: str) -> TokenInfo:  # noqa: N802
        """Revoke a token by its id: it is refused from now on (admins only)."""
        return _token_info(self._access.revoke_token(self._principal, id, time.time_ns() // 1000))

    @varlinkmethod(return_parameter="job")
    @answers_sjob_errors
    async def Start(  # noqa: N802 - Varlink method names are CamelCase
        self,
        spec: JobSpec,
        stdin: FileDescriptor | None = None,
        stdout: FileDescriptor | None = None,
        queue: bool | None = None,
    ) -> Job:
        """Start a job as the calling user; returns once systemd has executed it (or says why it could not).
        `stdin` is what the job reads (a pipe, file or stream socket; without it, nothing). With `spec.terminal`,
        the job runs on a pseudo-terminal of its own: `stdin` then carries frames of what the caller types and
        its window size, and `stdout` is a pipe the terminal's output goes to as it is written (it is recorded
        in the journal too). At the policy's cap on running jobs, `queue` true puts the job in the caller's queue
        (state queued; it takes no stdin) instead of refusing it; unset, the policy says which."""
        stdin_fd = stdin.fileno() if stdin else None
        stdout_fd = stdout.fileno() if stdout else None
        if spec.terminal is not None:
            if stdin_fd is None or stdout_fd is None:
                raise invalid_argument("a job with a terminal needs the stdin and stdout pipes of its terminal")
            if stdio.check_stdin(stdin_fd, self._socket_path) is not Input.pipe:
                raise invalid_argument("the input of a job's terminal must be a pipe")
            stdio.check_terminal_output(stdout_fd)
            passed = JobStdio(stdin_fd, Input.terminal, stdout_fd)
        elif stdout_fd is not None:
            raise invalid_argument("only a job with a terminal (spec.terminal) takes a stdout")
        elif stdin_fd is not None and (kind := stdio.check_stdin(stdin_fd, self._socket_path)) is not None:
            passed = JobStdio(stdin_fd, kind)
        else:
            passed = JobStdio()
        return await self._service.start(self._principal, spec, passed, queue=queue)

    # delay_generator=False: asyncvarlink otherwise holds each reply back until the next one exists (to know
    # whether it "continues"), so a job's line would reach the client only when the job wrote another.
    @varlinkmethod(delay_generator=False)
    @answers_sjob_errors
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
        follow = self._service.follow(self._principal, id, wait=wait, streams=streams, after_seq=after_seq)
        async with contextlib.aclosing(follow):
            async for item in follow:
                if isinstance(item, Chunk):
                    yield FollowReply(output=Output.of(item))
                elif isinstance(item, AttemptStart):
                    yield FollowReply(attempt=item)
                else:
                    raise LastResult(FollowReply(job=item))  # the one reply that does not continue
        raise _ended_without_state(id)

    @varlinkmethod(delay_generator=False)
    @answers_sjob_errors
    async def FollowPipe(  # noqa: N802
        self,
        id: str,
        wait: bool = True,
        streams: list[Stream] | None = None,
        after_seq: int = 0,
    ) -> AsyncIterator[PipeReply]:
        """Follow, with the output through a pipe instead of JSON: the first reply carries the pipe's read end
        (a file descriptor, as systemd's Varlink passes them), the output arrives there as frames (a header of
        stream, length, seq and usec, then the bytes as the job wrote them; stream 3, without bytes, marks where a
        retried job's next attempt begins, seq being its number), and once the pipe is closed the last reply
        carries the job. For clients that can receive file descriptors: no base64, no JSON per piece."""
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
                    pipe = PipeWriter(write_end)
                    try:
                        while isinstance(item, Chunk | AttemptStart):
                            if not await pipe.write(*frame_parts(item)):
                                raise LastResult(PipeReply())  # the client closed the pipe: it is gone
                            try:
                                item = await anext(follow)
                            except Exception:
                                # The output read so far still reaches the client, whole frames only, before the
                                # error (or the end of the job's records) does; a client that stopped reading gets
                                # a few seconds.
                                with contextlib.suppress(TimeoutError):
                                    async with asyncio.timeout(DRAIN_ON_ERROR):
                                        await pipe.drain()
                                raise
                        if not await pipe.drain():
                            raise LastResult(PipeReply())
                    finally:
                        pipe.close()
                finally:
                    for fd in (read_end, write_end):
                        if fd >= 0:
                            os.close(fd)
                raise LastResult(PipeReply(job=item))  # after the pipe's end: the client has read all output
        except StopAsyncIteration:
            pass
        raise _ended_without_state(id)

    @varlinkmethod(return_parameter="job")
    @answers_sjob_errors
    async def Status(self, id: str) -> Job:  # noqa: N802
        """Describe one of the caller's jobs."""
        return await self._service.status(self._principal, id)

    @varlinkmethod(return_parameter="jobs")
    @answers_sjob_errors
    def List(self, all: bool = False, running: bool = False) -> list[Job]:  # noqa: N802
        """The caller's jobs, newest first: only running ones with `running`, everyone's with `all` (root)."""
        return self._service.list_jobs(self._principal, everyone=all, running=running)

    @varlinkmethod(return_parameter="usage")
    @answers_sjob_errors
    async def Usage(self, all: bool = False) -> list[JobUsage]:  # noqa: N802
        """What the caller's running jobs use now (everyone's with `all`, for root and admins), newest first: CPU
        time, memory, tasks and IO bytes as systemd's accounting has them, each sample with the CLOCK_MONOTONIC
        time it was taken, so that two calls give rates."""
        return await self._service.usage(self._principal, everyone=all)

    @varlinkmethod(return_parameter="job")
    @answers_sjob_errors
    async def Stop(  # noqa: N802
        self,
        id: str,
        signal: str | None = None,
        grace_usec: int | None = None,
    ) -> Job:
        """Stop a job: SIGTERM to all its processes, SIGKILL after grace_usec (default 90 s). With `signal`
        (TERM, HUP, USR1, 9, ...) only send that signal. Returns at once; a finished job is left as it is."""
        signo = parse_signal(signal) if signal is not None else None
        return await self._service.stop(self._principal, id, signo=signo, grace_usec=grace_usec)

    @varlinkmethod(return_parameter="timer")
    @answers_sjob_errors
    async def Schedule(self, spec: JobSpec, schedule: TimerSchedule) -> Timer:  # noqa: N802
        """Make a timer that runs `spec` as the calling user on `schedule` (sjob-ID.timer and its service); each run
        is a job of its own. Its id names it to RemoveTimer; `spec` takes no terminal and no retry."""
        return await self._timer_service().schedule(self._principal, spec, schedule)

    @varlinkmethod(return_parameter="timers")
    @answers_sjob_errors
    async def ListTimers(self, all: bool = False) -> list[Timer]:  # noqa: N802
        """The caller's timers, newest first, with their next and last run; everyone's with `all` (admins)."""
        return await self._timer_service().list_timers(self._principal, everyone=all)

    @varlinkmethod(return_parameter="timer")
    @answers_sjob_errors
    async def RemoveTimer(self, id: str) -> Timer:  # noqa: N802
        """Remove one of the caller's timers: systemd runs it no more (a run under way goes on)."""
        return await self._timer_service().remove(self._principal, id)

    def _timer_service(self) -> TimerService:
        if self._timers is None:
            raise SjobError(ErrorCode.InternalError, "this sjobd serves no timers")
        return self._timers


def _ended_without_state(job_id: str) -> SjobError:
    return SjobError(ErrorCode.InternalError, f"the output of job {job_id} ended without its state")


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
