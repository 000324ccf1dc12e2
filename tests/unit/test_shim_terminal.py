"""sjob-shim with a terminal (`sjob run --pty`), end to end against a fake journald: the job runs on a
pseudo-terminal of its own, what the caller types arrives through framed input, what the terminal shows reaches
both the caller's pipe and the journal, window sizes follow the caller's, Ctrl-C is the terminal's, and a caller
that goes away hangs the terminal up."""

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervisor import logformat
from supervisor.logformat import OutputRecord
from supervisor.protocol import tty_data, tty_winsize

from .journalfake import FakeJournal
from .test_shim import shim  # noqa: F401 - the compiled shim, shared with the other shim tests


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[FakeJournal]:
    fake = FakeJournal(tmp_path)
    yield fake
    fake.close()


@dataclass
class TerminalJob:
    proc: subprocess.Popen[bytes]
    typed: int  # where the caller writes frames
    shown: int  # where the caller reads the terminal

    def type(self, frames: bytes) -> None:
        os.write(self.typed, frames)

    def read_until(self, wanted: bytes, timeout: float = 20) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while wanted not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{wanted!r} did not appear; the terminal showed {seen!r}"
            if select.select([self.shown], [], [], left)[0]:
                data = os.read(self.shown, 65536)
                assert data, f"the terminal ended before {wanted!r} appeared; it showed {seen!r}"
                seen += data
        return seen

    def read_to_end(self, timeout: float = 20) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and select.select([self.shown], [], [], deadline - time.monotonic())[0]:
            data = os.read(self.shown, 65536)
            if not data:
                return seen
            seen += data
        raise AssertionError(f"the terminal did not end; it showed {seen!r}")


@pytest.fixture
def start_on_terminal(shim: str, journal: FakeJournal) -> Iterator[object]:  # noqa: F811
    started: list[TerminalJob] = []

    def start(script: str, size: str = "24x80") -> TerminalJob:
        typed_r, typed_w = os.pipe()
        shown_r, shown_w = os.pipe()
        command = [shim, "--journal-socket", journal.path, f"--pty={size}", "1a2b3c4d", "--", "/bin/sh", "-c", script]
        proc = subprocess.Popen(command, stdin=typed_r, stdout=shown_w)
        os.close(typed_r)
        os.close(shown_w)
        job = TerminalJob(proc, typed_w, shown_r)
        started.append(job)
        return job

    yield start
    for job in started:
        if job.proc.poll() is None:
            job.proc.kill()
        job.proc.wait()
        for fd in (job.typed, job.shown):
            with contextlib.suppress(OSError):
                os.close(fd)


def recorded(journal: FakeJournal) -> bytes:
    journal.wait_for(logformat.F_EVENT, b"eof")
    return b"".join(r.data for e in journal.entries if isinstance(r := logformat.parse_record(e), OutputRecord))


def test_the_job_has_a_terminal_of_its_own_and_gets_what_is_typed(start_on_terminal, journal: FakeJournal) -> None:  # type: ignore[no-untyped-def]
    job = start_on_terminal("tty; stty size; read answer; echo got:$answer")
    shown = job.read_until(b"24 80\r\n")
    job.type(tty_data(b"Ada\n"))
    shown += job.read_until(b"got:Ada")
    assert job.proc.wait(timeout=20) == 0
    shown += job.read_to_end()
    assert shown.startswith(b"/dev/pts/")
    assert b"Ada\r\n" in shown  # the terminal echoed what was typed, as a local one does
    assert recorded(journal) == shown  # the journal has what the caller saw


def test_the_window_size_follows_the_callers(start_on_terminal) -> None:  # type: ignore[no-untyped-def]
    job = start_on_terminal("trap 'stty size' WINCH; echo ready; read x; stty size", size="24x80")
    job.read_until(b"ready")
    job.type(tty_winsize(50, 132) + tty_data(b"\n"))
    assert b"50 132" in job.read_until(b"50 132")
    assert job.proc.wait(timeout=20) == 0


def test_ctrl_c_is_the_terminals(start_on_terminal) -> None:  # type: ignore[no-untyped-def]
    job = start_on_terminal("echo ready; exec sleep 30")
    job.read_until(b"ready")
    job.type(tty_data(b"\x03"))  # the terminal's line discipline turns it into SIGINT for the foreground
    assert job.proc.wait(timeout=20) == -signal.SIGINT


def test_a_caller_that_goes_away_hangs_the_terminal_up(start_on_terminal) -> None:  # type: ignore[no-untyped-def]
    job = start_on_terminal("echo ready; exec sleep 30")
    job.read_until(b"ready")
    os.close(job.shown)
    assert job.proc.wait(timeout=20) == -signal.SIGHUP


def test_the_end_of_what_is_typed_leaves_the_terminal_up(start_on_terminal) -> None:  # type: ignore[no-untyped-def]
    job = start_on_terminal("sleep 1; echo still here")
    os.close(job.typed)
    assert b"still here" in job.read_until(b"still here")
    assert job.proc.wait(timeout=20) == 0


def test_binary_input_reaches_the_job_unchanged_in_raw_mode(start_on_terminal) -> None:  # type: ignore[no-untyped-def]
    data = bytes(range(256)) * 4
    job = start_on_terminal(f"stty raw -echo; echo ready; head -c {len(data)} | od -An -v -tx1 | tr -d ' \\n'")
    job.read_until(b"ready")
    job.type(tty_data(data))
    assert data.hex().encode() in job.read_until(data.hex()[-64:].encode())
