"""`sjob top`: rates from two samples, sorting, the plain table and JSON once, and the live view on a terminal
(driven through a pty: one refresh, a sorting key, q), which must leave the terminal as it found it."""

import json
import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from supervisor.cli.top import rows, sort_rows, table
from supervisor.protocol import Job, JobState, JobUsage
from supervisor.units import UnitUsage

from .serverthread import ServerThread
from .test_cli import SJOB, detach, sjob, wait_for_job


def job(job_id: str, started: int = 1_000_000) -> Job:
    return Job(job_id, f"sjob-{job_id}.service", JobState.running, 1000, "alice", ["sleep", "1"], "/", started, started)


def sample(job_id: str, at: float, cpu: int, mem: int, read: int = 0, write: int = 0, started: int = 1) -> JobUsage:
    return JobUsage(job(job_id, started), int(at * 1e6), cpu, mem, 3, read, write)


def test_cpu_percent_and_io_rates_come_from_two_samples() -> None:
    before = [sample("aaaaaaaa", 10.0, 1_000_000, 1 << 20, 0, 0)]
    after = [sample("aaaaaaaa", 12.0, 2_000_000, 1 << 20, 4096, 1 << 20), sample("bbbbbbbb", 12.0, 5, 2 << 20)]
    first, new = rows(before, after)
    assert first.cpu_percent == pytest.approx(50.0)  # 1 s of CPU in 2 s
    assert (first.read_rate, first.write_rate) == (2048.0, 524288.0)
    assert (new.cpu_percent, new.read_rate) == (None, None)  # one sample says nothing about a rate
    assert [r.usage.job.id for r in sort_rows([new, first], "cpu")] == ["aaaaaaaa", "bbbbbbbb"]
    assert [r.usage.job.id for r in sort_rows([first, new], "mem")] == ["bbbbbbbb", "aaaaaaaa"]


def test_a_counter_systemd_does_not_keep_is_no_rate() -> None:
    before = [JobUsage(job("aaaaaaaa"), 1, None, None, None, None, None)]
    after = [JobUsage(job("aaaaaaaa"), 2_000_001, None, None, None, None, None)]
    (row,) = rows(before, after)
    assert (row.cpu_percent, row.io_rate) == (None, None)
    assert "-" in table([row], 10_000_000)[1]


def test_age_sorts_the_longest_running_first() -> None:
    old, young = sample("aaaaaaaa", 1, 0, 0, started=1), sample("bbbbbbbb", 1, 0, 0, started=5)
    assert [r.usage.job.id for r in sort_rows(rows([], [young, old]), "age")] == ["aaaaaaaa", "bbbbbbbb"]


def test_once_and_piped_print_one_plain_table(server: ServerThread) -> None:
    job_id = detach(server, "sleep", "30")
    wait_for_job(server)
    server.units.usages[f"sjob-{job_id}.service"] = UnitUsage(1000, 5 << 20, 2, 0, 0)
    result = sjob(server, "top")  # piped: once, as top -b -n 1
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "USER", "CPU%", "MEM", "TASKS", "READ/s", "WRITE/s", "AGE", "COMMAND"]
    assert lines[1].split()[:5] == [job_id, lines[1].split()[1], "0.0", "5.0M", "2"]
    assert "\x1b" not in result.stdout.decode()
    listed = json.loads(sjob(server, "top", "--json").stdout)
    assert [(j["id"], j["memory_bytes"], j["tasks"], j["cpu_percent"]) for j in listed] == [(job_id, 5 << 20, 2, 0.0)]


def test_nothing_running(server: ServerThread) -> None:
    assert b"No running jobs" in sjob(server, "top", "--once").stdout
    assert json.loads(sjob(server, "top", "--json").stdout) == []


def test_live_view_refreshes_sorts_and_quits_restoring_the_terminal(server: ServerThread, tmp_path: Path) -> None:
    job_id = detach(server, "sleep", "30")
    wait_for_job(server)
    env = {**os.environ, "SJOB_SOCKET": server.socket, "TERM": "xterm"}
    top = pexpect.spawn(
        sys.executable,
        ["-c", "from supervisor.cli import main; main()", "top", "--delay", "200ms"],
        env=env,
        timeout=20,
        dimensions=(24, 100),
    )
    top.expect_exact("\x1b[?1049h")  # the alternate screen
    top.expect_exact(job_id)
    top.expect_exact("sort: cpu")
    top.send("m")
    top.expect_exact("sort: mem")
    top.expect_exact(job_id)  # redrawn, then refreshed
    top.send("q")
    top.expect_exact("\x1b[?1049l")  # the shell's screen back
    top.expect(pexpect.EOF)
    top.close()
    assert top.exitstatus == 0


def test_ctrl_c_and_sigterm_restore_the_terminal(server: ServerThread) -> None:
    env = {**os.environ, "SJOB_SOCKET": server.socket, "TERM": "xterm"}
    for stop in ("\x03", "TERM"):
        top = pexpect.spawn(
            sys.executable, ["-c", "from supervisor.cli import main; main()", "top"], env=env, timeout=20
        )
        top.expect_exact("No running jobs")
        if stop == "TERM":
            top.kill(15)
        else:
            top.send(stop)
        top.expect_exact("\x1b[?25h\x1b[?1049l")
        top.expect(pexpect.EOF)
        top.close()
        assert top.exitstatus == (130 if stop == "\x03" else 143)


def test_ctrl_z_gives_the_terminal_back_until_continued(server: ServerThread) -> None:
    env = {**os.environ, "SJOB_SOCKET": server.socket, "TERM": "xterm"}
    top = pexpect.spawn(sys.executable, [*SJOB[1:], "top"], env=env, timeout=20)
    top.expect_exact("No running jobs")
    top.send("\x1a")
    top.expect_exact("\x1b[?25h\x1b[?1049l")  # the shell's screen while it is stopped
    top.kill(signal.SIGCONT)  # as the shell's fg does
    top.expect_exact("\x1b[?1049h")
    top.expect_exact("No running jobs")  # redrawn at once
    top.send("q")
    top.expect(pexpect.EOF)
    top.close()
    assert top.exitstatus == 0
