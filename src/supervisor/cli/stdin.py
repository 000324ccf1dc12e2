"""What `sjob run` gives the job to read (issue F), as systemd-run's --pipe and --pty do.

- Our stdin, if it is a pipe, a file or a socket (`cat data | sjob run ...`, `sjob run ... < file`): passed to sjobd
  as it is (SCM_RIGHTS), which hands it to the unit, so the bytes go straight from the writer to the job and its
  end is the job's EOF. Not when detached (`-d`) or asked not to (`-n`), and never our terminal: a job gets
  /dev/null then, as under systemd-run.
- With `--pty`, a pseudo-terminal of the job's own, made inside its unit: what we type goes to it through a pipe
  of frames (protocol.TTY_FRAME: the bytes, and our window size whenever it changes), and what it shows comes back
  through another pipe as it is written. Our own terminal is in raw mode meanwhile, so every key, Ctrl-C and
  Ctrl-Z included, is the job's terminal's to interpret, as on a local terminal; it is restored on every way out.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import tty
from collections.abc import Iterator

from supervisor import waiting
from supervisor.protocol import Terminal, tty_data, tty_winsize

DEFAULT_SIZE = Terminal(24, 80)


def passed_stdin(*, detach: bool, no_stdin: bool) -> int | None:
    """Our stdin to hand the job, or None for nothing (/dev/null)."""
    if detach or no_stdin:
        return None
    try:
        os.fstat(0)
    except OSError:
        return None  # closed
    return None if os.isatty(0) else 0


def terminal_size() -> Terminal:
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return Terminal(size.lines or DEFAULT_SIZE.rows, size.columns or DEFAULT_SIZE.cols)
    return DEFAULT_SIZE


class TerminalRelay:
    """Our side of a job's terminal: two pipes, and the loop that relays between them and our terminal."""

    def __init__(self) -> None:
        self.typed_read, self._typed = os.pipe2(os.O_CLOEXEC)  # the job's end is typed_read
        self._shown, self.shown_write = os.pipe2(os.O_CLOEXEC)  # the job's end is shown_write

    def close_job_ends(self) -> None:
        """Once the job has its own copies (Start returned), ours would keep the pipes from ending."""
        for fd in (self.typed_read, self.shown_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self.close_job_ends()
        self._close_typed()
        with contextlib.suppress(OSError):
            os.close(self._shown)

    def relay(self) -> None:
        """Until the job's terminal ends: what we type to it, what it shows to our stdout."""
        with _raw(0) as raw, _window_changes() as changed:
            os.set_blocking(self._typed, False)
            pending = b""
            reading = True
            wake = waiting.wake_fd()  # a SIGINT sent to sjob just before the select still stops the job at once
            while True:
                wanted = [self._shown, changed] + ([0] if reading and len(pending) < (1 << 20) else [])
                wanted += [wake] if wake >= 0 else []
                readable, writable, _ = select.select(wanted, [self._typed] if pending else [], [])
                if wake in readable:
                    waiting.take_signals(wake)
                if changed in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(changed, 512)
                    pending += tty_winsize(*_size())
                if 0 in readable:
                    data = os.read(0, 65536)
                    if data:
                        pending += tty_data(data)
                    else:
                        reading = False  # our input ended; the job's terminal stays up
                        if not raw and not pending:
                            self._close_typed()
                if writable and pending and self._typed >= 0:
                    try:
                        pending = pending[os.write(self._typed, pending) :]
                    except BrokenPipeError:
                        pending, reading = b"", False
                    except BlockingIOError:
                        pass
                    if not reading and not pending:
                        self._close_typed()
                if self._shown in readable:
                    data = os.read(self._shown, 1 << 16)
                    if not data:
                        return  # the job's terminal has ended
                    _write_all(1, data)

    def _close_typed(self) -> None:
        """Our input has ended: the job's terminal reads no more (it stays up, as a terminal does)."""
        if self._typed >= 0:
            os.close(self._typed)
            self._typed = -1


def _size() -> tuple[int, int]:
    size = terminal_size()
    return size.rows, size.cols


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[bool]:
    """Our terminal in raw mode, if stdin is one, restored however we leave (an exception, SIGTERM, SIGHUP)."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield False
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in previous:
        signal.signal(sig, leave)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _window_changes() -> Iterator[int]:
    """A descriptor that becomes readable whenever our window size changes (SIGWINCH)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _poke(write_end))
    try:
        yield read_end
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(read_end)
        os.close(write_end)


def _poke(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(fd, b"\0")
