"""Integration tests: a real sjobd, systemd and journald, as installed by install.sh (in the test VM, or on a
systemd host as root). Nothing here is faked. Each test cleans up the units it created.

These tests refuse to run, rather than skip, where they cannot be honest: not root, or no systemd.

The test VM runs them in phases (tests/vm/guest-test.sh): every test not marked `serial`, `timing` or `last`
several at a time (pytest-xdist), then the `timing` ones alone, then the `serial` ones alone, then the `last` ones
alone. A test is `timing` when it measures time, rates or memory, or waits a fixed time: nothing else may run on the
host meanwhile, not even another suite's VM. A test is `serial` when it changes what every test shares (sjobd's
process or policy, systemd's configuration, the journal files, the test users' groups) or when what it asserts
covers the whole machine (all sjob units), but measures nothing: from the serial phase on, the next suite's VM
runs its tests on the same host beside it. A serial test also marked `aside` runs after the other serial ones; in
a full run of the suites the last suite's serial tests marked `aside` run in the VM of its last tests instead
(tests/vm/vmtest.py), to even out the time of the two VMs: `aside` says only where a serial test runs, and is
refused on any other. `last` is for tests that reinstall sjob. The helpers that make such
changes refuse to run in the parallel phase (`alone()`), so a test that needs the mark and lacks it fails instead of
disturbing others at random.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SJOB = os.environ.get("SJOB_BIN", "/usr/local/bin/sjob")
SOCKET = "/run/sjob/io.sjob.Jobs"
TEST_USERS = ("sjobtest-alice", "sjobtest-bob")
# useradd, usermod and gpasswd lock /etc/passwd and /etc/group and give up when another one holds them.
USERS_LOCK = Path("/run/sjob-tests-users.lock")
PARALLEL = "PYTEST_XDIST_WORKER" in os.environ  # set in pytest-xdist's workers: other tests run meanwhile


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial(why): the test changes what every test shares; it runs alone in its VM, but another VM may run "
        "beside it (see tests/integration/conftest.py)",
    )
    config.addinivalue_line(
        "markers",
        "timing(why): the test measures time, rates or memory: it runs alone, with no other VM on the host",
    )
    config.addinivalue_line(
        "markers",
        "aside: a serial test that may run in the VM of the suite's last tests instead of the suite's own "
        "(tests/vm/vmtest.py), to even out their time",
    )
    config.addinivalue_line(
        "markers", "last(why): the test runs alone after all others and measures nothing: the host may be busy"
    )
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root")
    if not Path("/run/systemd/system").is_dir():
        problems.append("systemd is not PID 1")
    if not Path(SJOB).exists():
        problems.append(f"{SJOB} is not installed (run install.sh first)")
    if problems:
        pytest.exit("integration tests cannot run here: " + "; ".join(problems), returncode=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`aside` moves a serial test; on any other it would mean nothing (the parallel phase would take it)."""
    stray = [i.nodeid for i in items if i.get_closest_marker("aside") and not i.get_closest_marker("serial")]
    if stray:
        raise pytest.UsageError(f"marked aside but not serial: {', '.join(stray)}")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def alone(what: str) -> None:
    """Called by the helpers that change what every test shares: in the parallel phase the test fails, saying why."""
    if PARALLEL:
        pytest.fail(
            f"{what} changes what every test shares: mark the test @pytest.mark.serial(...) (or timing)", pytrace=False
        )


@contextlib.contextmanager
def users_locked() -> Iterator[None]:
    with USERS_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def change_users(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """usermod, gpasswd, ...: one at a time across the parallel workers."""
    with users_locked():
        return run(*argv)


def ensure_user(name: str) -> User:
    with users_locked():
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
            entry = pwd.getpwnam(name)
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


@pytest.fixture(scope="session")
def alice() -> User:
    return ensure_user(TEST_USERS[0])


@pytest.fixture(scope="session")
def bob() -> User:
    return ensure_user(TEST_USERS[1])


# The jobs the running test started, by id: cleanup_units stops what is left of them. run() and varlink_call() note
# them: the id a detached `sjob run` prints, and the one sjob names when an attached job ends abnormally.
started_jobs: set[str] = set()
JOB_ID = re.compile(r"[0-9a-f]{8}")
NAMED_JOB = re.compile(r"^(?:Running as unit: sjob-|sjob: (?:stopping |killing )?job )([0-9a-f]{8})\b", re.M)


def note_started(args: Sequence[str], result: subprocess.CompletedProcess[bytes]) -> None:
    if list(args[:2]) != [SJOB, "run"]:
        return
    options = args[2 : args.index("--")] if "--" in args else args[2:]
    printed = result.stdout.split(maxsplit=1)[:1]
    if {"-d", "--detach"} & set(options) and printed and JOB_ID.fullmatch(printed[0].decode(errors="replace")):
        started_jobs.add(printed[0].decode())
    started_jobs.update(NAMED_JOB.findall(result.stderr.decode(errors="replace")))


def run(
    *args: str, user: User | None = None, cwd: str | None = None, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run a command, as `user` if given (`as_user`)."""
    if user is not None:
        kw = {**kw, **as_user(user, kw.get("env"))}
        cwd = cwd or user.home
    result = subprocess.run(list(args), capture_output=True, cwd=cwd or "/", timeout=timeout, check=False, **kw)
    note_started(args, result)
    return result


def as_user(user: User, env: dict[str, str] | None = None) -> dict[str, Any]:
    """subprocess's arguments that run a command as `user` would from a login-less session (as `runuser -u` does):
    their uid, gid and supplementary groups as /etc/group has them now, and HOME, SHELL, USER and LOGNAME set. Done
    by subprocess in the child rather than by runuser, whose PAM session cost ~120 ms of CPU per command in the test
    VM, over 400 times per suite. `env` is the environment to start from (ours by default)."""
    env = {
        **(os.environ if env is None else env),
        "HOME": user.home,
        "SHELL": "/bin/sh",
        "USER": user.name,
        "LOGNAME": user.name,
    }
    return {"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid), "env": env}


def sjob(
    *args: str, user: User | None = None, cwd: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return run(SJOB, *args, user=user, cwd=cwd, timeout=timeout)


def sjob_units() -> set[str]:
    out = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "--type=service", "sjob-*").stdout.decode()
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# Polling helpers that start no sjob CLI: under emulation each `sjob` costs 1-2 s of CPU, and a poll loop of them
# takes that from every test running alongside. The tests still assert on what the CLI says, once the wait is over.


def status_reply(job_id: str, user: User | None = None) -> dict[str, Any]:
    """sjobd's reply to `Status` of the job (as `user`): its record, or a Varlink error."""
    (reply,) = varlink_call("io.sjob.Jobs.Status", {"id": job_id}, user=user)
    return reply


def job_state(job_id: str, user: User | None = None) -> str:
    """The job's state as sjobd answers `Status` (as `user`), or the Varlink error's name."""
    reply = status_reply(job_id, user)
    return str(reply["parameters"]["job"]["state"]) if "error" not in reply else str(reply["error"])


def job_fields(job_id: str, user: User | None = None) -> dict[str, Any]:
    """The job as sjobd answers `Status` (as `user`): the fields `sjob status --json` shows, without the CLI."""
    reply = status_reply(job_id, user)
    assert "error" not in reply, reply
    job: dict[str, Any] = reply["parameters"]["job"]
    return job


def in_journal(job_id: str, text: bytes) -> bool:
    """Whether the job's records in the journal (its output among them) hold `text`."""
    return text in run("journalctl", "-q", "-o", "cat", f"SJOB_JOB_ID={job_id}").stdout


def wait_until(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[bytes, bytes]:
    """Send SIGINT to `sjob` as Ctrl-C would and collect what it prints until it exits. Started with
    PYTHONFAULTHANDLER=1, a sjob that does not exit in time is made to say where it is (SIGABRT), and the test fails
    with that, its signal masks, and what systemd and sjobd say of the job (a hang seen twice, once local, once
    over ssh, with nothing to go on)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        except FileNotFoundError:  # it exited just now
            status = []
        masks = [line for line in status if line.startswith(("State", "Sig", "ShdPnd"))]
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        text = err.decode(errors="replace")
        found = NAMED_JOB.search(text)
        job = f"sjob-{found.group(1)}.service" if found else "?"
        unit = run("systemctl", "show", "-p", "ActiveState,SubState,Result,InvocationID", job).stdout.decode()
        records = run("journalctl", "-q", "-o", "short-precise", "-u", job, "-u", "sjobd.service", "--since", "-3min")
        pytest.fail(
            f"sjob did not exit within {timeout:g}s of SIGINT; {masks}\nit printed and was at:\n{text}\n"
            f"{job}: {unit}\njournal of it and sjobd:\n{records.stdout.decode(errors='replace')[-6000:]}"
        )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every job can read: pytest's tmp_path is under /tmp, and each job has a private /tmp."""
    path = Path("/srv/sjob-tests") / os.urandom(6).hex()
    path.mkdir(parents=True, mode=0o755)
    Path("/srv/sjob-tests").chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def cleanup_units() -> Iterator[None]:
    """Stop and forget every sjob unit a test leaves behind, so tests cannot leak into each other: the jobs it
    started, and when it runs alone also any other sjob unit that appeared meanwhile. In the parallel phase the
    other units that appear are other tests' jobs, which are theirs to stop."""
    started_jobs.clear()
    before = set() if PARALLEL else sjob_units()
    yield
    units = sjob_units()
    leftover = sorted({f"sjob-{job_id}.service" for job_id in started_jobs} & units)
    if not PARALLEL:
        leftover += sorted(units - before - set(leftover))
    if leftover:
        run("systemctl", "stop", *leftover)
        run("systemctl", "reset-failed", *leftover)


def varlink_call(
    method: str, parameters: dict[str, Any], user: User | None = None, more: bool = False
) -> list[dict[str, Any]]:
    """A raw Varlink call, as any client could make it; as `user` by forking and dropping privileges."""
    request = (
        json.dumps({"method": method, "parameters": parameters, **({"more": True} if more else {})}).encode() + b"\0"
    )
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if user is not None:
                os.setgroups([])
                os.setgid(user.gid)
                os.setuid(user.uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(60)
                s.connect(SOCKET)
                s.sendall(request)
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    messages = [json.loads(m) for m in data.split(b"\0")[:-1]]
                    if messages and (not messages[-1].get("continues")):
                        break
            os.write(write, data)
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    replies = [json.loads(m) for m in data.split(b"\0")[:-1]]
    if method == "io.sjob.Jobs.Start":
        started_jobs.update(r["parameters"]["job"]["id"] for r in replies if "job" in r.get("parameters", {}))
    return replies
