"""The first process of every job: it wires the job's stdout/stderr to journald, byte-exact, then becomes the job.

sjobd starts each job as `python3 -I -S shim.py JOB_ID -- ARGV...` (ExecStart= of sjob-<id>.service). The shim

1. makes one pipe per stream,
2. double-forks a *forwarder* that reads both pipes and sends every read() as one native-protocol journald entry
   (see logformat.py), so the entry is attributed to the unit and no byte is altered. The double fork makes the
   forwarder a child of the service manager, not of the job: a job that waits for "all its children" never
   waits for it,
3. points its own stdout/stderr at the pipes and exec()s ARGV, so the job itself is the unit's main process:
   systemd sees the job's own exit status and signals, and `systemctl status` shows the real command.

The forwarder ignores SIGTERM/SIGINT/SIGHUP: when the job ends, systemd sends SIGTERM to what is left in the
cgroup, and the forwarder must still drain what the job wrote. It exits at end-of-file on both pipes, after
journald has taken every datagram (SIOCOUTQ reaches 0): journald reads a sender's cgroup from /proc when it
receives a datagram, and an entry from a process that is already gone would lose its _SYSTEMD_UNIT.

It runs with `-I -S` to start fast, so it may import nothing outside the stdlib but `supervisor.logformat`.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import time

# -I drops the script's directory from sys.path; the package lives one level up from this file. Appended, so
# nothing installed beside it can shadow the stdlib.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supervisor import logformat

JOURNAL_SOCKET = "/run/systemd/journal/socket"
READ_SIZE = 64 * 1024  # one record at most; also fits comfortably in one datagram
PIPE_SIZE = 1024 * 1024  # buffer bursts so a fast writer blocks less often (pipe-max-size for users)
F_SETPIPE_SZ = 1031
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class JournalWriter:
    """A minimal client of journald's native protocol (systemd.journal-fields(7), "Native Protocol")."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or JOURNAL_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._connect()

    def _connect(self) -> None:
        delay = 0.01
        while True:
            try:
                self.sock.connect(self.path)
                return
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    raise
            # journald is restarting; its socket unit keeps the socket, so this is short. Waiting, not dropping.
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def encode(fields: list[tuple[str, bytes]]) -> bytes:
        parts = []
        for name, value in fields:
            key = name.encode()
            if b"\n" in value:
                parts.append(key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
            else:
                parts.append(key + b"=" + value + b"\n")
        return b"".join(parts)

    def send(self, fields: list[tuple[str, bytes]]) -> None:
        payload = self.encode(fields)
        delay = 0.001
        while True:
            try:
                self.sock.send(payload)
                return
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    self._send_memfd(payload)
                    return
                if e.errno in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise

    def _send_memfd(self, payload: bytes) -> None:
        # Too large for a datagram: journald accepts a sealed memfd passed with SCM_RIGHTS instead.
        fd = os.memfd_create("sjob-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, payload)
            fcntl.fcntl(
                fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
            )
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        finally:
            os.close(fd)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until journald has received every datagram we sent (see the module docstring)."""
        deadline = time.monotonic() + timeout
        buf = bytearray(4)
        while time.monotonic() < deadline:
            fcntl.ioctl(self.sock, termios.TIOCOUTQ, buf)
            if struct.unpack("i", buf)[0] == 0:
                break
            time.sleep(0.002)
        # journald reads our /proc entry right after it receives; give that a moment before we disappear.
        time.sleep(0.02)


def forward(job_id: str, ident: str, pipes: dict[int, str], writer: JournalWriter) -> None:
    """Send everything that arrives on `pipes` (fd -> stream name) to journald until all are at EOF."""
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    open_fds = dict(pipes)
    seq = 0
    sizes = dict.fromkeys(pipes.values(), 0)
    while open_fds:
        for fd, _ in poller.poll():
            if fd not in open_fds:
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except InterruptedError:
                continue
            stream = open_fds[fd]
            if not data:
                poller.unregister(fd)
                os.close(fd)
                del open_fds[fd]
                continue
            seq += 1
            sizes[stream] += len(data)
            writer.send(logformat.output_fields(job_id, ident, seq, stream, data))
    writer.send(logformat.eof_fields(job_id, ident, seq, sizes))
    writer.drain()


def _make_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # over the user's pipe quota: the default size still works
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def _become_forwarder(job_id: str, ident: str, pipes: dict[int, str], write_ends: list[int]) -> None:
    for fd in write_ends:
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    status = 0
    try:
        forward(job_id, ident, pipes, JournalWriter())
    except BaseException as e:
        os.write(2, f"sjob forwarder: {e!r}\n".encode(errors="replace"))
        status = 1
    os._exit(status)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: shim.py JOB_ID -- COMMAND [ARG...]\n")
        return 2
    job_id, command = argv[1], argv[3:]
    ident = os.path.basename(command[0]) or "sjob"

    out_r, out_w = _make_pipe()
    err_r, err_w = _make_pipe()
    pipes = {out_r: "stdout", err_r: "stderr"}

    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            _become_forwarder(job_id, ident, pipes, [out_w, err_w])
        os._exit(0)
    os.waitpid(child, 0)

    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (out_r, out_w, err_r, err_w):
        os.close(fd)
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals stay ignored across exec(): undo that so the job
    # behaves as it would under a shell (e.g. `yes | head` ends `yes` by SIGPIPE).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)  # noqa: S606 - becoming the job is the point
    except OSError as e:
        os.write(2, f"sjob: cannot execute {command[0]!r}: {e.strerror}\n".encode(errors="replace"))
        return EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_EXECUTE


if __name__ == "__main__":
    sys.exit(main(sys.argv))
