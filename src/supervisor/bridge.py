"""`sjob --bridge`: the remote end of `sjob -H`, as systemd-stdio-bridge is of `systemctl -H`.

Run by ssh on the remote machine as the ssh login user, it connects to sjobd's socket and copies bytes: its stdin
to the socket, the socket to its stdout. sjobd sees the bridge's credentials (SO_PEERCRED), so the caller is the
ssh login user, decided by the kernel there. Descriptors sjobd passes (FollowPipe's pipe) cannot go on over ssh:
they are closed (the client uses Follow instead). The bridge ends when either side does: when its stdin ends the
client is done, and whatever sjobd was still sending is no longer wanted.
"""

from __future__ import annotations

import os
import select
import socket
import sys

from supervisor.client import RECEIVE_SIZE, socket_path

UNAVAILABLE = 69  # EX_UNAVAILABLE, as sjob's own "sjobd cannot be reached"


def main() -> int:
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as e:
        sys.stderr.write(f"sjob --bridge: cannot connect to sjobd at {path}: {e.strerror}\n")
        return UNAVAILABLE
    with sock:
        return copy(sock, sys.stdin.fileno(), sys.stdout.fileno())


def copy(sock: socket.socket, into: int, out: int) -> int:
    """Copy `into` to `sock` and `sock` to `out` until either ends; 0 when one did, 1 on an error."""
    poller = select.poll()
    poller.register(into, select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == into:
                    data = os.read(into, RECEIVE_SIZE)
                    if not data:
                        return 0
                    sock.sendall(data)
                else:
                    data, fds, _, _ = socket.recv_fds(sock, RECEIVE_SIZE, 8, socket.MSG_CMSG_CLOEXEC)
                    for passed in fds:
                        os.close(passed)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view) :]
    except OSError as e:  # the client or sjobd went away mid-copy: nothing to report to either
        sys.stderr.write(f"sjob --bridge: {e.strerror or e}\n")
        return 1
