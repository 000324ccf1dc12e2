"""Waiting for a descriptor to be readable such that no signal slips past the wait (the CLI's blocking reads).

Python runs a signal's handler (KeyboardInterrupt, for SIGINT) between bytecodes, or when a system call it is in
fails with EINTR. A signal that lands after the last such check and before a blocking read() begins interrupts
nothing: the read waits on, and Ctrl-C does nothing until the job writes again, maybe never. Seen in the VM:
`sjob run` ignored a SIGINT sent just after the job's first line in 2 of 36 runs under load (and once each in two
earlier CI runs); a ten-line script that writes, then reads a pipe, does the same natively.

So a wait polls its descriptors together with the process's wake-up pipe, which every signal Python handles
writes to (signal.set_wakeup_fd): a signal that came before the poll leaves a byte there, poll returns at once, and
`take_signals` runs the handler. One pipe for the whole CLI: `sjob top`'s screen and the `--pty` relay wait on it
too, so that none of them takes a byte meant for another.
"""

from __future__ import annotations

import os
import select
import signal

_pipe: list[int] = []  # the wake-up pipe's read end and write end, made at the first wait


def wake_fd() -> int:
    """The read end of the wake-up pipe, installed as the process's wakeup fd; -1 where it cannot be: outside the
    main thread (only it runs handlers), or while another wakeup fd is in place (an event loop's), left as it is."""
    if not _pipe:
        _pipe.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
    read_end, write_end = _pipe
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (threading is not imported: it costs every sjob call start-up time)
        return -1
    if previous not in (-1, write_end):
        signal.set_wakeup_fd(previous)  # someone else's: put back
        return -1
    return read_end


def take_signals(wake: int) -> None:
    """Empty the wake-up pipe and run the handlers of the signals that came: a KeyboardInterrupt comes out here,
    not after the caller's next read has taken data it then never hands on."""
    try:
        while os.read(wake, 512):
            pass
    except BlockingIOError:
        pass
    signal.pthread_sigmask(signal.SIG_BLOCK, ())  # changes nothing; it runs pending handlers (PyErr_CheckSignals)


def wait_readable(fd: int) -> None:
    """Return once `fd` has something to read (or its end, or an error, which the read then reports). A signal
    that arrived before or during the wait has its handler run here: a KeyboardInterrupt comes out of this call."""
    wake = wake_fd()
    if wake < 0:
        return  # the read blocks as it would have
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(wake, select.POLLIN)
    while True:
        ready = {ready_fd for ready_fd, _ in poller.poll()}
        if wake in ready:
            take_signals(wake)
        if fd in ready:
            return
