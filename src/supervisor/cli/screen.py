"""A full-screen view on the terminal for `sjob top`, with plain ANSI sequences: the alternate screen (so the shell's
screen comes back as it was), the cursor hidden, keys read one at a time without echo, and the view redrawn in place
from the top left. `Screen` restores all of it on every way out (q, Ctrl-C, an error, SIGTERM or SIGHUP), and
while Ctrl-Z has it stopped: the shell gets its screen and terminal back, and `fg` brings the view back.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import tty

from supervisor import waiting

ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
LEAVE = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"


def _leave(signo: int, _frame: object) -> None:
    raise SystemExit(128 + signo)  # unwinds through Screen.__exit__, which restores the terminal


class Screen:
    def __init__(self, fd_in: int | None = None, fd_out: int | None = None) -> None:
        self._in = sys.stdin.fileno() if fd_in is None else fd_in
        self._out = sys.stdout.fileno() if fd_out is None else fd_out
        self._saved: list[object] | None = None
        self._wake = -1
        self._handlers: dict[int, object] = {}

    def __enter__(self) -> Screen:
        self._saved = termios.tcgetattr(self._in)
        # A resize interrupts the wait for a key through the wake-up pipe (waiting), and the view is redrawn.
        self._wake = waiting.wake_fd()
        try:
            self._handlers = {
                signal.SIGWINCH: signal.signal(signal.SIGWINCH, lambda *_: None),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _leave),
                signal.SIGHUP: signal.signal(signal.SIGHUP, _leave),
                signal.SIGTSTP: signal.signal(signal.SIGTSTP, self._suspend),
            }
            self._enter()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _enter(self) -> None:
        tty.setcbreak(self._in, termios.TCSANOW)  # keys one by one, no echo; Ctrl-C is still SIGINT
        self._write(ENTER)

    def _restore(self) -> None:
        with contextlib.suppress(OSError):
            self._write(LEAVE)
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._in, termios.TCSADRAIN, self._saved)  # type: ignore[arg-type]

    def _suspend(self, _signo: int, _frame: object) -> None:
        """Ctrl-Z: give the shell its terminal back, stop, and take the terminal again on `fg` (the wake-up pipe
        has the signal, so the view is redrawn at once)."""
        self._restore()
        os.kill(os.getpid(), signal.SIGSTOP)
        with contextlib.suppress(OSError, termios.error):
            self._enter()

    def __exit__(self, *_: object) -> None:
        self._restore()
        self._saved = None
        for signo, handler in self._handlers.items():
            signal.signal(signo, handler)  # type: ignore[arg-type]
        self._handlers = {}

    @property
    def width(self) -> int:
        return self._size()[0]

    @property
    def height(self) -> int:
        return self._size()[1]

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self._out)
        except OSError:
            return 80, 24
        return size.columns or 80, size.lines or 24

    def draw(self, lines: list[str]) -> None:
        """Replace what is shown with `lines`, from the top left, without clearing first (no flicker)."""
        self._write(
            HOME + "".join(f"{line}{CLEAR_LINE}\r\n" for line in lines[:-1]) + lines[-1] + CLEAR_LINE + CLEAR_BELOW
        )

    def wait_key(self, timeout: float) -> str | None:
        """The next key pressed within `timeout` seconds, or None when the time is up or the window was resized."""
        ready, _, _ = select.select([self._in] + ([self._wake] if self._wake >= 0 else []), [], [], timeout)
        if self._wake in ready:
            waiting.take_signals(self._wake)  # Ctrl-C's KeyboardInterrupt, SIGTERM's exit, a resize's nothing
        if self._in in ready:
            data = os.read(self._in, 64)
            if not data:
                return "q"  # the terminal went away
            return data[:1].decode("ascii", "replace").lower()
        return None

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self._out, data) :]
