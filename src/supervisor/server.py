"""sjobd's Varlink server: accepts connections on its Unix socket and serves io.sjob.Jobs on each, one principal
per connection (identified by peer), until it is closed.

A client cannot stall others: one user (by kernel uid) may hold at most MAX_CONNECTIONS_PER_USER connections
(MAX_CONNECTIONS in all), and each connection is guarded on its own (see connection). Running out of file
descriptors pauses accepting instead of spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

from asyncvarlink import VarlinkInterfaceRegistry, VarlinkTransport
from asyncvarlink.serviceinterface import VarlinkServiceInterface

import supervisor
from supervisor.access import Access
from supervisor.audit import AuditEntry
from supervisor.auth import Principal
from supervisor.connection import Connection
from supervisor.errors import ErrorCode, SjobError
from supervisor.fninterface import FunctionsInterface
from supervisor.functions import FunctionService
from supervisor.interface import JobsInterface
from supervisor.jobs import JobService
from supervisor.peer import identify, refuse_peer
from supervisor.protocol import INTERFACE
from supervisor.timers import TimerService

log = logging.getLogger(__name__)

MAX_CONNECTIONS_PER_USER = 32
MAX_CONNECTIONS = 1024
ACCEPT_RETRY = 1.0  # seconds without accepting after accept() failed for want of resources (EMFILE)


class Server:
    """Accepts connections on a listening Unix socket and serves io.sjob.Jobs on each."""

    def __init__(
        self,
        service: JobService,
        access: Access,
        sock: socket.socket,
        functions: FunctionService | None = None,
        timers: TimerService | None = None,
    ) -> None:
        self._service = service
        self._functions = functions
        self._timers = timers
        self._access = access
        self._sock = sock
        name = sock.getsockname()
        self._path = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
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
        functions = FunctionsInterface(self._functions, principal, self._path) if self._functions is not None else None
        registry.register_interface(
            JobsInterface(
                self._service,
                self._access,
                principal,
                self._path,
                functions.authenticated_as if functions is not None else None,
                self._timers,
            )
        )
        if functions is not None:
            registry.register_interface(functions)
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
