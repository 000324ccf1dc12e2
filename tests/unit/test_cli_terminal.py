"""`sjob run --pty`'s side of the job's terminal (cli.stdin.TerminalRelay) against the real sjob-shim, both driven
from a real pseudo-terminal as a user's would be (pexpect): typing reaches the job, its terminal's output comes
back, window sizes follow ours, and our terminal is restored afterwards."""

import sys
import textwrap
from pathlib import Path

import pexpect
import pytest

from .journalfake import FakeJournal
from .test_shim import shim  # noqa: F401 - the compiled shim

ROOT = Path(__file__).resolve().parents[2]

# Stands in for `sjob run --pty`: the relay, and the shim sjobd would start with the relay's pipes.
DRIVER = textwrap.dedent(
    """
    import subprocess, sys, termios
    from supervisor.cli.stdin import TerminalRelay, terminal_size
    shim, journal, script = sys.argv[1:4]
    before = termios.tcgetattr(0)
    relay = TerminalRelay()
    size = terminal_size()
    pty = f"--pty={size.rows}x{size.cols}"
    job = subprocess.Popen(
        [shim, "--journal-socket", journal, pty, "1a2b3c4d", "--", "/bin/sh", "-c", script],
        stdin=relay.typed_read, stdout=relay.shown_write,
    )
    relay.close_job_ends()
    relay.relay()
    relay.close()
    status = job.wait()
    restored = termios.tcgetattr(0) == before
    print(f"\\nstatus={status} restored={restored}")
    """
)


@pytest.fixture
def journal(tmp_path: Path) -> FakeJournal:
    return FakeJournal(tmp_path)


def drive(shim: str, journal: FakeJournal, script: str, size: tuple[int, int] = (24, 80)) -> "pexpect.spawn[bytes]":  # noqa: F811
    return pexpect.spawn(
        sys.executable,
        ["-c", DRIVER, shim, journal.path, script],
        cwd=str(ROOT),
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        dimensions=size,
        timeout=20,
    )


def test_typing_reaches_the_job_and_its_answer_comes_back(shim: str, journal: FakeJournal) -> None:  # noqa: F811
    child = drive(shim, journal, "printf 'name? '; read name; echo Hello $name; tty")
    child.expect_exact("name? ")
    child.send("Ada\r")  # as a terminal sends Enter
    child.expect_exact("Hello Ada")
    child.expect(r"/dev/pts/\d+")
    child.expect(r"status=0 restored=True")
    child.close()
    journal.close()


def test_the_window_size_follows_ours(shim: str, journal: FakeJournal) -> None:  # noqa: F811
    # The trap first: a resize between the first size and the trap would be lost (seen with the tests in parallel).
    child = drive(shim, journal, "trap 'stty size; exit 0' WINCH; stty size; while :; do sleep 0.1; done", (24, 80))
    child.expect_exact("24 80")
    child.setwinsize(40, 100)
    child.expect_exact("40 100")
    child.expect(r"status=0 restored=True")
    child.close()
    journal.close()


def test_ctrl_c_is_the_jobs(shim: str, journal: FakeJournal) -> None:  # noqa: F811
    child = drive(shim, journal, "trap 'echo caught INT; exit 3' INT; echo ready; while :; do sleep 0.1; done")
    child.expect_exact("ready")
    child.sendcontrol("c")
    child.expect_exact("caught INT")
    child.expect(r"status=3 restored=True")
    child.close()
    journal.close()
