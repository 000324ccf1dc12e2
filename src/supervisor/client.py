"""A small synchronous Varlink client for io.sjob.Jobs, used by the CLI.

Synchronous and stdlib-only on purpose: `sjob` must start fast, and importing asyncio (let alone asyncvarlink) costs
more than the whole call. Varlink framing is one JSON object per message, each terminated by a NUL byte.

Output comes through FollowPipe: sjobd passes a pipe (SCM_RIGHTS, as systemd's Varlink does) and writes framed raw
bytes into it, which costs a fraction of base64 inside JSON per piece (the `Follow` method, kept for other clients).

The connection is sjobd's socket here, or, with `sjob -H [USER@]HOST` (`use_host`), an ssh session to HOST whose
remote end runs `sjob --bridge` (`bridge`), as `systemctl -H` runs systemd-stdio-bridge: the same bytes, but no file
descriptors can cross it, so output comes through `Follow` and nothing can be passed to a job's stdin.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

from supervisor import environment
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import (
    DEFAULT_SOCKET,
    FRAME,
    AttemptStart,
    Chunk,
    IssuedToken,
    Job,
    JobSpec,
    JobUsage,
    Method,
    Output,
    Schedule,
    Stream,
    Timer,
    TokenInfo,
    error_from_wire,
    from_wire,
    to_wire,
    unframe,
)
from supervisor.waiting import wait_readable

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from typing import Any, Self

MAX_REPLY = 64 * 1024 * 1024
RECEIVE_SIZE = 256 * 1024

_host: str | None = None  # sjob -H: the [USER@]HOST every Client of this process talks to


def socket_path() -> str:
    return os.environ.get(environment.SOCKET) or DEFAULT_SOCKET


def use_host(host: str | None) -> None:
    """Make every Client of this process talk to sjobd on `host` ([USER@]HOST) over ssh; None: the local one."""
    global _host  # noqa: PLW0603 - one choice per process, made once from `sjob -H`
    if host is not None:
        from supervisor.remote import parse_host  # noqa: PLC0415 - only -H needs it

        parse_host(host)  # refuse a malformed one before anything runs
    _host = host


def remote_host() -> str | None:
    """The host given with `sjob -H`, or None when sjobd is the local one."""
    return _host


def token_from_environment() -> str | None:
    """The token to present, from $SJOB_TOKEN or the file named by $SJOB_TOKEN_FILE; None for none."""
    if token := os.environ.get(environment.TOKEN, "").strip():
        return token
    path = os.environ.get(environment.TOKEN_FILE)
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as f:
            token = f.read(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SjobError(
            ErrorCode.InvalidArgument,
            f"cannot read the token file {path} (from ${environment.TOKEN_FILE}): {getattr(e, 'strerror', None) or e}",
            hint=f"point ${environment.TOKEN_FILE} at the file 'sjob token issue' wrote, or unset it",
        ) from None
    if not token:
        raise SjobError(ErrorCode.InvalidArgument, f"the token file {path} (from ${environment.TOKEN_FILE}) is empty")
    return token


class Client:
    """One connection to sjobd; calls are made one after another."""

    def __init__(self, path: str | None = None, token: str | None = None) -> None:
        """Connect; with a token (by default the environment's, see `token_from_environment`), act as its
        principal instead of as the calling user. With `sjob -H` (and no `path`), connect over ssh: the remote
        identity is the ssh login user, so no token of this machine is sent there."""
        self._transport: Transport
        if path is None and _host is not None:
            from supervisor.remote import SshTransport  # noqa: PLC0415 - only -H needs it (and subprocess)

            self._transport = SshTransport(_host)
            token = None
        else:
            self._transport = UnixTransport(path or socket_path())
            token = token if token is not None else token_from_environment()
        self._buffer = b""
        self._fds: list[int] = []  # passed with the reply being read (SCM_RIGHTS); owned until taken
        self.principal: str | None = None
        if token:
            try:
                self.principal = str(self.call(Method.Authenticate, {"token": token})["principal"])
            except BaseException:
                self.close()
                raise

    @property
    def passes_fds(self) -> bool:
        """Whether descriptors can go to sjobd and come back (not over ssh)."""
        return self._transport.passes_fds

    def close(self) -> None:
        self._close_fds()
        self._transport.close()

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- io.sjob.Jobs --------------------------------------------------------------------------------------

    def start(
        self, spec: JobSpec, *, stdin: int | None = None, stdout: int | None = None, queue: bool | None = None
    ) -> Job:
        """Start a job; `stdin` (a pipe, file or socket) is what it reads, passed to it as it is. With
        `spec.terminal`, `stdin` is the pipe of frames for its terminal and `stdout` the pipe its terminal's
        output comes through (protocol.TTY_FRAME). `queue`: at the policy's cap on running jobs, wait in the queue
        (True) or be refused (False); None: as the policy says."""
        parameters: dict[str, Any] = {"spec": to_wire(spec)}
        if queue is not None:
            parameters["queue"] = queue
        fds: list[int] = []
        for name, fd in (("stdin", stdin), ("stdout", stdout)):
            if fd is not None:
                parameters[name] = len(fds)
                fds.append(fd)
        self._check_passing(fds)
        return from_wire(Job, self.call(Method.Start, parameters, fds)["job"])

    def follow(
        self, job_id: str, *, wait: bool = True, streams: list[Stream] | None = None, after_seq: int = 0
    ) -> Iterator[Chunk | AttemptStart | Job]:
        """The job's output from its start (or after record `after_seq`), then the job: as it ended, or without
        `wait`, as it is once the output so far has been sent. A retried job's output has an AttemptStart where each
        next attempt begins."""
        for batch in self.follow_batches(job_id, wait=wait, streams=streams, after_seq=after_seq):
            if isinstance(batch, list):
                yield from batch
            else:
                yield batch

    def follow_batches(
        self, job_id: str, *, wait: bool = True, streams: list[Stream] | None = None, after_seq: int = 0
    ) -> Iterator[list[Chunk | AttemptStart] | Job]:
        """`follow`, the output in batches: what one read brought, so that a copier writes it at once."""
        parameters: dict[str, Any] = {"id": job_id, "wait": wait, "after_seq": after_seq}
        if streams is not None:
            parameters["streams"] = [s.value for s in streams]
        if not self.passes_fds:  # over ssh: the pieces come inline, in base64
            for reply in self.call_more(Method.Follow, parameters):
                if "output" in reply:
                    yield [from_wire(Output, reply["output"]).chunk()]
                elif "attempt" in reply:
                    yield [from_wire(AttemptStart, reply["attempt"])]
                elif "job" in reply:
                    yield from_wire(Job, reply["job"])
            return
        replies = self.call_more(Method.FollowPipe, parameters)
        pipe = self._take_fd(next(replies).get("pipe"))
        try:
            yield from _frames(pipe)
        finally:
            os.close(pipe)
        for reply in replies:
            if "job" in reply:
                yield from_wire(Job, reply["job"])

    def status(self, job_id: str) -> Job:
        return from_wire(Job, self.call(Method.Status, {"id": job_id})["job"])

    def stop(self, job_id: str, *, signal: str | None = None, grace_usec: int | None = None) -> Job:
        parameters: dict[str, Any] = {"id": job_id}
        if signal is not None:
            parameters["signal"] = signal
        if grace_usec is not None:
            parameters["grace_usec"] = grace_usec
        return from_wire(Job, self.call(Method.Stop, parameters)["job"])

    def list_jobs(self, *, everyone: bool = False, running: bool = False) -> list[Job]:
        jobs = self.call(Method.List, {"all": everyone, "running": running})["jobs"]
        if not isinstance(jobs, list):
            raise SjobError(ErrorCode.ProtocolError, "malformed reply from sjobd: 'jobs' is not a list")
        return [from_wire(Job, j) for j in jobs]

    def schedule(self, spec: JobSpec, schedule: Schedule) -> Timer:
        """Make a timer that runs `spec` on `schedule`."""
        return from_wire(
            Timer, self.call(Method.Schedule, {"spec": to_wire(spec), "schedule": to_wire(schedule)})["timer"]
        )

    def timers(self, *, everyone: bool = False) -> list[Timer]:
        return [from_wire(Timer, t) for t in reply_list(self.call(Method.ListTimers, {"all": everyone}), "timers")]

    def remove_timer(self, timer_id: str) -> Timer:
        return from_wire(Timer, self.call(Method.RemoveTimer, {"id": timer_id})["timer"])

    def usage(self, *, everyone: bool = False) -> list[JobUsage]:
        """What the running jobs use now (sjob top)."""
        return [from_wire(JobUsage, u) for u in reply_list(self.call(Method.Usage, {"all": everyone}), "usage")]

    def issue_token(self, subject: str, scope: list[str] | None, ttl_usec: int | None) -> IssuedToken:
        parameters: dict[str, Any] = {"subject": subject}
        if scope:
            parameters["scope"] = scope
        if ttl_usec is not None:
            parameters["ttl_usec"] = ttl_usec
        return from_wire(IssuedToken, self.call(Method.IssueToken, parameters)["issued"])

    def list_tokens(self) -> list[TokenInfo]:
        tokens = self.call(Method.ListTokens, {})["tokens"]
        if not isinstance(tokens, list):
            raise SjobError(ErrorCode.ProtocolError, "malformed reply from sjobd: 'tokens' is not a list")
        return [from_wire(TokenInfo, t) for t in tokens]

    def revoke_token(self, token_id: str) -> TokenInfo:
        return from_wire(TokenInfo, self.call(Method.RevokeToken, {"id": token_id})["token"])

    # --- Varlink -------------------------------------------------------------------------------------------

    def call(self, method: str, parameters: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """One call; `fds` are passed with it (SCM_RIGHTS), named in `parameters` by their index."""
        self._send({"method": method, "parameters": parameters}, fds)
        reply = self._receive()
        if reply.get("continues"):
            raise SjobError(ErrorCode.ProtocolError, f"sjobd sent several replies to {method}")
        return reply

    def call_more(self, method: str, parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self._send({"method": method, "parameters": parameters, "more": True})
        while True:
            reply = self._receive()
            yield reply
            if not reply.get("continues"):
                return

    def _check_passing(self, fds: list[int]) -> None:
        if fds and not self.passes_fds:
            raise SjobError(
                ErrorCode.InvalidArgument,
                f"{self._transport.name} cannot take file descriptors: no stdin or terminal can reach a job there",
            )

    def _take_fd(self, index: object) -> int:
        """The file descriptor a reply names by its index among those passed with it; the caller closes it."""
        if not isinstance(index, int) or not 0 <= index < len(self._fds):
            raise SjobError(ErrorCode.ProtocolError, "sjobd did not pass the file descriptor its reply names")
        fd = self._fds.pop(index)
        self._close_fds()
        return fd

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        self._close_fds()
        data = json.dumps(message, separators=(",", ":")).encode() + b"\0"
        try:
            self._transport.send(data, fds or [])
        except OSError as e:
            # sjobd refuses some connections at once (too many, from inside a job): it sends why and closes, and
            # our request then meets a closed socket. The refusal is still ours to read, and says more.
            try:
                self._receive()
            except SjobError as refusal:
                if refusal.code is not ErrorCode.NotConnected:
                    raise refusal from e
            raise self._lost(e) from e

    def _receive(self) -> dict[str, Any]:
        while (end := self._buffer.find(b"\0")) < 0:
            if len(self._buffer) > MAX_REPLY:
                raise SjobError(ErrorCode.ProtocolError, f"sjobd sent a reply larger than {MAX_REPLY} bytes")
            try:
                chunk, fds = self._transport.receive()
            except OSError as e:
                raise self._lost(e) from e
            self._fds += fds
            if not chunk:
                raise self._lost(None)
            self._buffer += chunk
        raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        try:
            message = json.loads(raw)
        except ValueError as e:
            raise SjobError(ErrorCode.ProtocolError, f"sjobd sent invalid JSON: {e}") from e
        if not isinstance(message, dict):
            raise SjobError(ErrorCode.ProtocolError, "sjobd sent a reply that is not a JSON object")
        parameters = message.get("parameters") or {}
        if "error" in message:
            raise error_from_wire(str(message["error"]), parameters if isinstance(parameters, dict) else {})
        if not isinstance(parameters, dict):
            raise SjobError(ErrorCode.ProtocolError, "sjobd sent reply parameters that are not an object")
        return {**parameters, "continues": bool(message.get("continues"))}

    def _lost(self, e: OSError | None) -> SjobError:
        detail = f": {e.strerror}" if e is not None and e.strerror else ""
        return self._transport.lost(detail)


class Transport:
    """How the Varlink messages reach sjobd: its socket, or ssh to another host (remote.SshTransport)."""

    name = "sjobd"
    passes_fds = False

    def send(self, data: bytes, fds: list[int]) -> None:
        raise NotImplementedError

    def receive(self) -> tuple[bytes, list[int]]:
        """What arrived (b"" at the end), with any descriptors passed along (the caller owns them)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def lost(self, detail: str) -> SjobError:
        """The error for a connection that broke (`detail`: ': why', or empty)."""
        return SjobError(
            ErrorCode.NotConnected,
            f"lost the connection to {self.name}{detail}",
            hint="'journalctl -u sjobd' shows why; running jobs are not affected",
        )


class UnixTransport(Transport):
    """sjobd's Unix socket on this machine: descriptors go both ways (SCM_RIGHTS)."""

    passes_fds = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise SjobError(
                ErrorCode.NotConnected,
                f"cannot connect to sjobd at {path}: {e.strerror}",
                hint="is sjob installed and its socket enabled? 'systemctl status sjobd.socket' tells; "
                "install with 'sudo ./install.sh'",
            ) from e

    def send(self, data: bytes, fds: list[int]) -> None:
        if fds:
            # The descriptors travel with the first bytes; the rest follows as usual.
            sent = socket.send_fds(self._sock, [data], fds)
            self._sock.sendall(data[sent:])
        else:
            self._sock.sendall(data)

    def receive(self) -> tuple[bytes, list[int]]:
        wait_readable(self._sock.fileno())
        chunk, fds, _, _ = socket.recv_fds(self._sock, RECEIVE_SIZE, 8, socket.MSG_CMSG_CLOEXEC)
        return chunk, fds

    def close(self) -> None:
        self._sock.close()


def reply_list(reply: dict[str, Any], key: str) -> list[Any]:
    value = reply.get(key)
    if not isinstance(value, list):
        raise SjobError(ErrorCode.ProtocolError, f"malformed reply from sjobd: {key!r} is not a list")
    return value


def _frames(pipe: int) -> Iterator[list[Chunk | AttemptStart]]:
    """The chunks (and a retried job's attempt markers) framed in what is read from `pipe` until its end
    (protocol.FRAME), a list of those each read completed. What one read brought is unframed where it lies; only
    a frame a read cut off is copied aside, with the bytes of the next reads that finish it (copying every read
    into one buffer, and each piece out of it twice, took a sixth of the CLI's time for `sjob logs` of 20 MB, in
    the test VM)."""
    rest = bytearray()  # a frame a read cut off
    while True:
        wait_readable(pipe)  # a Ctrl-C just before a quiet job's read must not wait for its next line
        if not (data := os.read(pipe, 1 << 20)):
            break
        offset = 0
        batch = []
        while rest and offset < len(data):  # finish the cut frame: its header, then its bytes
            whole = FRAME.size if len(rest) < FRAME.size else FRAME.size + FRAME.unpack_from(rest)[1]
            taken = memoryview(data)[offset : offset + whole - len(rest)]
            rest += taken
            offset += len(taken)
            if (found := unframe(rest, 0)) is not None:  # a malformed header raises here, before its length is used
                batch.append(found[0])
                rest.clear()
        while (found := unframe(data, offset)) is not None:
            item, offset = found
            batch.append(item)
        if not rest:
            rest += memoryview(data)[offset:]
        if batch:
            yield batch
    if rest:
        raise SjobError(ErrorCode.ProtocolError, "sjobd ended the output in the middle of a piece of it")
