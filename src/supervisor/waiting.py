"""Waiting for a descriptor to be readable such that no signal slips past the wait (the CLI's blocking reads).

Python runs a signal's handler (KeyboardInterrupt, for SIGINT) between bytecodes, or when a system call it is in
fails with EINTR. A signal that lands after the last such check and before a blocking read() begins interrupts
nothing: the read waits on, and Ctrl-C does nothing until the job writes again, maybe never. Seen in the VM:
`sjob run` ignored a SIGINT sent just after the job's first line in 2 of 36 runs under load (and once each in two
earlier CI runs); a ten-line script that writes, then reads a pipe, does the same natively.

So a read first polls its descriptor together with a self-pipe that every signal Python handles writes to
(signal.set_wakeup_fd). A signal that came before the poll leaves a byte there and poll returns at once; the
handler runs as the loop goes round (a backward jump is one of the places Python runs pending handlers).
"""

from __future__ import annotations

import os
import select
import signal

_pipe: list[int] = []  # the wake-up pipe's read end and write end, made at the first wait


def _wake_fd() -> int:
    """The read end of the wake-up pipe, installed as the process's wakeup fd; -1 where it cannot be: outside the
    main thread (only it runs handlers), or while another wakeup fd is in place (sjob top's screen has its own)."""
    if not _pipe:
        _pipe.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
    read_end, write_end = _pipe
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (threading is not imported: it costs every sjob call start-up time)
        return -1
    if previous not in (-1, write_end):
        signal.set_wakeup_fd(previous)  # someone else's: left as it was
        return -1
    return read_end


def wait_readable(fd: int) -> None:
    """Return once `fd` has something to read (or its end, or an error, which the read then reports). A signal
    that arrived before or during the wait has its handler run here: a KeyboardInterrupt comes out of this call."""
    wake = _wake_fd()
    if wake < 0:
        return  # the read blocks as it would have
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(wake, select.POLLIN)
    while True:
        ready = {ready_fd for ready_fd, _ in poller.poll()}
        if wake in ready:
            _drain(wake)
        if fd in ready:
            return
        # Only the wake-up pipe: a handler that raises does so as the loop turns; one that returns, we wait on.


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
