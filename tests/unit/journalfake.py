"""A stand-in for journald's native socket, for unit tests of the shim: it receives datagrams (and memfds passed
with SCM_RIGHTS) on a socket in a temp dir and decodes the native protocol."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
import time
from pathlib import Path


def decode(payload: bytes) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(payload):
        newline = payload.index(b"\n", pos)
        line = payload[pos:newline]
        if line.startswith((b"#", b".")):  # a comment or control line: journald skips it
            pos = newline + 1
            continue
        if b"=" in line:
            name, value = line.split(b"=", 1)
            pos = newline + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", payload[newline + 1 : newline + 9])
            value = payload[newline + 9 : newline + 9 + size]
            assert payload[newline + 9 + size : newline + 10 + size] == b"\n"
            pos = newline + 10 + size
        fields[name.decode()] = value
    return fields


class FakeJournal:
    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "journal.socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # as journald: the sender's pid and uid
        self.sock.settimeout(0.1)
        self.entries: list[dict[str, bytes]] = []
        self.datagrams: list[dict[str, bytes]] = []  # every datagram as received, in order, with its sender
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        fds = array.array("i")
        while not self._stop:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(
                    1 << 20, socket.CMSG_SPACE(fds.itemsize) + socket.CMSG_SPACE(struct.calcsize("3i"))
                )
            except TimeoutError:
                continue
            trusted: dict[str, bytes] = {}
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    (fd,) = array.array("i", cdata[: fds.itemsize])
                    with os.fdopen(fd, "rb") as f:
                        data = f.read()
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _ = struct.unpack("3i", cdata[: struct.calcsize("3i")])
                    trusted = {"_PID": str(pid).encode(), "_UID": str(uid).encode()}
            self.datagrams.append({**trusted, "datagram": data})
            if fields := decode(data):  # an entry without fields: journald stores nothing
                self.entries.append({**fields, **trusted})

    def wait_for(self, field: str, value: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get(field) == value for e in self.entries):
            if time.monotonic() > deadline:
                raise AssertionError(f"no entry with {field}={value!r} in {len(self.entries)} entries")
            time.sleep(0.01)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()
