"""waiting.wait_readable: a signal that came before a blocking read still interrupts it (the Ctrl-C hang)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from supervisor import waiting


class SignalledError(Exception):
    pass


@pytest.fixture
def usr1_raises() -> Iterator[None]:
    def handler(_signo: int, _frame: object) -> None:
        raise SignalledError

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)
        signal.set_wakeup_fd(-1)


def test_a_signal_taken_by_another_thread_interrupts_the_wait(usr1_raises: None) -> None:
    """The race made certain: the main thread blocks SIGUSR1, so another thread takes the signal and the main
    thread's wait never fails with EINTR; only the wake-up pipe can tell it. A plain blocking read would wait until
    the other thread gives up and writes, and only then raise."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    read_end, write_end = os.pipe()
    done, gave_up = threading.Event(), threading.Event()

    def signal_from_another_thread() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        time.sleep(0.2)  # most likely the main thread waits by now; it must work either way
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        if not done.wait(10):
            gave_up.set()
            os.write(write_end, b"x")

    thread = threading.Thread(target=signal_from_another_thread)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        thread.start()
        with pytest.raises(SignalledError):
            read_after_wait(read_end)
    finally:
        done.set()
        thread.join()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        os.close(read_end)
        os.close(write_end)
    assert not gave_up.is_set(), "the wait went on after the signal, until there was something to read"


def read_after_wait(fd: int) -> bytes:
    waiting.wait_readable(fd)
    return os.read(fd, 1)


def test_wait_returns_for_data_and_for_the_end(usr1_raises: None) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"x")
    waiting.wait_readable(read_end)
    assert os.read(read_end, 1) == b"x"
    os.close(write_end)
    waiting.wait_readable(read_end)
    assert os.read(read_end, 1) == b""
    os.close(read_end)
