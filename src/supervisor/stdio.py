"""What a caller may hand a job as its stdin, or as the output of its terminal: file descriptors passed with a
Start request (SCM_RIGHTS), checked here before sjobd gives them to systemd, never trusted.

sjobd passes them on to the unit as they are (StandardInputFileDescriptor=, StandardOutputFileDescriptor=): the
bytes never go through sjobd, and a job that never reads cannot block it or anyone else. What could go wrong is what
the descriptor *is*, so only these are taken (issue F):
- as stdin: a pipe, a regular file, /dev/null, or a connected stream socket, open for reading. Never a terminal:
  a job holding its caller's terminal could push input into the caller's shell (TIOCSTI) or read what they type
  next, long after the job "ended"; a job that needs a terminal gets a pseudo-terminal of its own (`--pty`). Never
  a socket connected to sjobd itself: jobs may not talk to sjobd (issue E.3). Never a directory, a device, an
  O_PATH descriptor or a kernel object (eventfd, epoll, signalfd, ...);
- as a terminal's output: a pipe open for writing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import termios

from supervisor.errors import invalid_argument
from supervisor.protocol import Input

DEV_NULL = os.makedev(1, 3)
O_PATH = getattr(os, "O_PATH", 0o10000000)
_HINT = "give sjob a pipe or a file: 'cat FILE | sjob run ...' or 'sjob run ... < FILE' (--pty for a terminal)"


def check_stdin(fd: int, sjobd_socket: str) -> Input | None:
    """What the job will read through `fd`, if a job may read it; None for /dev/null."""
    flags = _flags(fd, "stdin")
    if flags & O_PATH or flags & os.O_ACCMODE == os.O_WRONLY:
        raise invalid_argument("the job's stdin is not open for reading", hint=_HINT)
    mode = os.fstat(fd)
    if _is_terminal(fd):
        raise invalid_argument(
            "the job's stdin is a terminal; a job never gets its caller's terminal",
            hint="'sjob run --pty' gives the job a terminal of its own",
        )
    if stat.S_ISFIFO(mode.st_mode):
        return Input.pipe
    if stat.S_ISREG(mode.st_mode):
        return Input.file
    if stat.S_ISCHR(mode.st_mode) and mode.st_rdev == DEV_NULL:
        return None
    if stat.S_ISSOCK(mode.st_mode):
        _check_socket(fd, sjobd_socket)
        return Input.socket
    raise invalid_argument(f"the job's stdin is {_kind(mode.st_mode)}, which a job may not read", hint=_HINT)


def check_terminal_output(fd: int) -> None:
    """`fd` must be a pipe open for writing: the caller reads the job's terminal from its other end."""
    flags = _flags(fd, "terminal output")
    if flags & O_PATH or flags & os.O_ACCMODE == os.O_RDONLY or not stat.S_ISFIFO(os.fstat(fd).st_mode):
        raise invalid_argument("the job's terminal output must be a pipe open for writing")


def _flags(fd: int, what: str) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        raise invalid_argument(f"the job's {what} is not an open file descriptor") from None


def _is_terminal(fd: int) -> bool:
    try:
        termios.tcgetattr(fd)
    except termios.error as e:
        return bool(e.args[0] != errno.ENOTTY)
    return True


def _check_socket(fd: int, sjobd_socket: str) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise invalid_argument("the job's stdin is a listening socket", hint=_HINT)
        if sock.type != socket.SOCK_STREAM:
            raise invalid_argument("the job's stdin is a socket but not a stream socket", hint=_HINT)
        try:
            peer = sock.getpeername()
        except OSError:
            raise invalid_argument("the job's stdin is a socket that is not connected", hint=_HINT) from None
        if sock.family == socket.AF_UNIX and peer in (sjobd_socket, sjobd_socket.encode()):
            raise invalid_argument("the job's stdin is a connection to sjobd; jobs may not talk to sjobd", hint=_HINT)
    finally:
        sock.close()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISCHR(mode):
        return "a character device"
    return "a kernel object (not a file, pipe or socket)"
