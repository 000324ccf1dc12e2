"""Issue F on real systemd: a job reads its caller's pipe or file exactly (passed to the unit as it is, never
through sjobd), gets a terminal of its own with --pty, and never its caller's terminal."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from .conftest import SJOB, SOCKET, User, run, sjob
from .test_skeleton import status


def find_job(user: User, marker: str) -> dict[str, object]:
    """The user's job whose command holds `marker`: other tests may start jobs meanwhile (they run in parallel)."""
    jobs = json.loads(run(SJOB, "list", "--json", user=user).stdout)
    (job,) = [j for j in jobs if marker in j["argv"]]
    return dict(job)


def piped(data: bytes, *args: str, user: User, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return run(SJOB, *args, user=user, input=data, timeout=timeout)


def test_lines_through_a_pipe_arrive_exactly(alice: User) -> None:
    result = piped(b"a\nb\n", "run", "--", "cat", user=alice)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"a\nb\n", b"")


def test_binary_input_round_trips(alice: User) -> None:
    data = os.urandom(3_000_000) + b"\0\0\r\n" + bytes(range(256))
    result = piped(data, "run", "--", "cat", user=alice)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_prompt_and_its_answer(alice: User) -> None:
    result = piped(b"Ada\n", "run", "--", "python3", "-c", "print('Hello', input())", user=alice)
    assert (result.returncode, result.stdout) == (0, b"Hello Ada\n")


def test_a_200mb_file_given_as_stdin_arrives_whole(alice: User, shared_dir: Path) -> None:
    big = shared_dir / "big"
    with open(big, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    big.chmod(0o644)
    want = subprocess.run(["cksum", str(big)], capture_output=True, check=True).stdout.split()[:2]
    result = run("sh", "-c", f"{SJOB} run -- cksum < {big}", user=alice, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == want


# `head -c 1000000000 /dev/zero | cksum`: the CRC and the length of 10**9 zero bytes, a constant, so that the VM
# reads the gigabyte once, in the job. cksum rather than sha256sum: for a stream of zeros either shows only that
# no byte was lost, added or changed, and cksum costs half the CPU (about 20 s less under emulation).
GIGABYTE_OF_ZEROS_CKSUM = [b"803772590", b"1000000000"]


def test_a_gigabyte_through_a_pipe_arrives_whole(alice: User) -> None:
    result = run("sh", "-c", f"head -c 1000000000 /dev/zero | {SJOB} run -- cksum", user=alice, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == GIGABYTE_OF_ZEROS_CKSUM


@pytest.mark.timing("bounds how long sjobd takes to answer another user")
def test_the_callers_eof_arrives_and_a_job_that_never_reads_does_not_hang_anyone(alice: User, bob: User) -> None:
    slow = run("sh", "-c", f"(echo a; sleep 1; echo b) | {SJOB} run -- cat", user=alice)
    assert (slow.returncode, slow.stdout) == (0, b"a\nb\n")
    # A job that never reads its endless input: neither the client nor sjobd waits for it, and others are served.
    started = time.monotonic()
    never = subprocess.Popen(
        ["runuser", "-u", alice.name, "--", "sh", "-c", f"yes | {SJOB} run -- sleep 5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1)
    asked = time.monotonic()
    assert sjob("list", user=bob).returncode == 0
    assert time.monotonic() - asked < 10
    never.communicate(timeout=120)
    assert never.returncode == 0
    done = run("sh", "-c", f"yes | {SJOB} run -- true", user=alice, timeout=120)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 180


def test_a_detached_job_or_one_told_so_reads_nothing(alice: User) -> None:
    detached = piped(b"data\n", "run", "-d", "-q", "--", "wc", "-c", user=alice)
    job_id = detached.stdout.decode().strip()
    logs = run(SJOB, "logs", "-f", job_id, user=alice)
    assert logs.stdout.strip() == b"0"
    marker = f"told-{os.urandom(4).hex()}"
    told = piped(b"data\n", "run", "-n", "--", "sh", "-c", "wc -c", marker, user=alice)
    assert told.stdout.strip() == b"0"
    assert status(job_id, alice)["input"] is None
    assert find_job(alice, marker)["input"] is None


def test_the_job_input_is_recorded(alice: User) -> None:
    marker = f"piped-{os.urandom(4).hex()}"
    piped(b"x", "run", "--", "sh", "-c", "cat", marker, user=alice)
    assert find_job(alice, marker)["input"] == "pipe"


def test_python_on_a_terminal_of_its_own(alice: User) -> None:
    child = pexpect.spawn(
        "runuser", ["-u", alice.name, "--", SJOB, "run", "--pty", "--", "python3", "-q"], cwd=alice.home, timeout=90
    )
    child.expect_exact(">>> ")
    child.sendline("name = input('name? ')")
    child.expect_exact("name? ")
    child.sendline("Ada")
    child.expect_exact(">>> ")
    child.sendline("print('Hello', name)")
    child.expect_exact("Hello Ada")
    child.expect_exact(">>> ")  # (3.13's REPL draws it in colour: the text is all this matches)
    child.sendline("import os; print(os.ttyname(0), os.isatty(1))")
    child.expect(r"/dev/pts/\d+ True")
    # The prompt first, as a person would wait for it: a Ctrl-D typed while Python still runs the line meets the
    # terminal in cooked mode, which turns it into an end-of-file mark that readline, once it takes the terminal
    # back, reads as a NUL. Python then never sees EOF, on a local terminal as well (measured on the host).
    child.expect_exact(">>> ")
    child.sendcontrol("d")  # end of input, as the job's terminal says
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_ctrl_c_reaches_a_terminal_job_as_its_terminals_signal(alice: User) -> None:
    # (Not Python's REPL here: after a KeyboardInterrupt, Python 3.11's REPL ends by SIGINT even on Ctrl-D, locally
    # as well; that is Python's exit status, not sjob's.)
    script = "trap 'echo caught INT; exit 7' INT; echo ready; while :; do sleep 0.1; done"
    child = pexpect.spawn("runuser", ["-u", alice.name, "--", SJOB, "run", "-t", "--", "sh", "-c", script], timeout=90)
    child.expect_exact("ready")
    child.sendcontrol("c")
    child.expect_exact("caught INT")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7, child.before


def test_tty_inside_a_terminal_job_is_a_pts_and_logs_show_it(alice: User) -> None:
    marker = f"tty-{os.urandom(4).hex()}"
    child = pexpect.spawn(
        "runuser",
        ["-u", alice.name, "--", SJOB, "run", "-t", "--", "sh", "-c", "tty", marker],
        cwd=alice.home,
        timeout=90,
    )
    child.expect(r"/dev/pts/\d+")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    job_id = str(find_job(alice, marker)["id"])
    assert status(job_id, alice)["input"] == "terminal"
    assert run(SJOB, "logs", job_id, user=alice).stdout.startswith(b"/dev/pts/")


def test_sjobd_never_hands_a_job_a_terminal(alice: User) -> None:
    """A raw client passing its terminal as a job's stdin is refused: the job could push input into its caller's
    shell (TIOCSTI) or read what they type next."""
    master, slave = os.openpty()
    request = {
        "method": "io.sjob.Jobs.Start",
        "parameters": {"spec": {"argv": ["/usr/bin/true"], "cwd": "/"}, "stdin": 0},
    }
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(SOCKET)
            socket.send_fds(sock, [json.dumps(request).encode() + b"\0"], [slave])
            reply = json.loads(sock.recv(65536).split(b"\0")[0])
    finally:
        os.close(master)
        os.close(slave)
    assert reply["error"] == "io.sjob.Jobs.InvalidArgument", reply
    assert "is a terminal" in reply["parameters"]["message"]


def test_only_a_terminal_job_has_dev_pts(alice: User) -> None:
    """A job runs as its owner, who may have other terminals open: without --pty it has no /dev/pts to read
    their keystrokes from (review of F)."""
    plain = sjob("run", "--", "sh", "-c", "ls /dev/pts", user=alice)
    assert plain.returncode != 0
    child = pexpect.spawn("runuser", ["-u", alice.name, "--", SJOB, "run", "-t", "--", "ls", "/dev/pts"], timeout=90)
    child.expect("ptmx")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
