"""The server's accept loop when the process is out of file descriptors (issue E, section 4)."""

import asyncio
import errno
import os
import socket
from pathlib import Path
from typing import Any

from supervisor.peer import _peer_process
from supervisor.server import Server


class ExhaustedSocket(socket.socket):
    """A real listening socket whose accept() fails as it does when sjobd has no file descriptor left."""

    calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        ExhaustedSocket.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_emfile_pauses_accepting_instead_of_spinning(tmp_path: Path) -> None:
    async def main() -> None:
        listener = ExhaustedSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "s"))
        listener.listen()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / "s"))  # pending in the backlog: the listener stays readable
        server = Server(None, None, listener)  # type: ignore[arg-type]  # accept() fails before either is used
        server.start()
        await asyncio.sleep(0.5)
        # Without the pause this callback ran tens of thousands of times in 0.5 s and starved every client.
        assert ExhaustedSocket.calls == 1
        await asyncio.sleep(0.7)
        assert ExhaustedSocket.calls == 2  # it tries again after ACCEPT_RETRY
        server.stop_accepting()
        client.close()
        listener.close()

    asyncio.run(main())


class PeerSocket:
    """What _peer_process asks of a connection: SO_PEERPIDFD, answering as a kernel would."""

    def __init__(self, error: int) -> None:
        self.error = error

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        raise OSError(self.error, os.strerror(self.error))


def test_a_peer_gone_before_accept_is_not_judged_by_a_reused_pid() -> None:
    # Linux 6.5-6.15 answer EINVAL for a reaped peer: its pid may be another process's now, so no cgroup at all.
    assert _peer_process(PeerSocket(errno.EINVAL), os.getpid()) == (-1, None)  # type: ignore[arg-type]
    assert _peer_process(PeerSocket(errno.ESRCH), os.getpid()) == (-1, None)  # type: ignore[arg-type]
    # A kernel without SO_PEERPIDFD: the pid from SO_PEERCRED, as before.
    pid, cgroup = _peer_process(PeerSocket(errno.ENOPROTOOPT), os.getpid())  # type: ignore[arg-type]
    assert pid == os.getpid()
    assert cgroup is not None
