"""Integration tests: a real sjobd, systemd and journald, as installed by install.sh (in the test VM, or on a
systemd host as root). Nothing here is faked. Each test cleans up the units it created.

These tests refuse to run, rather than skip, where they cannot be honest: not root, or no systemd.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SJOB = os.environ.get("SJOB_BIN", "/usr/local/bin/sjob")
SOCKET = "/run/sjob/io.sjob.Jobs"
TEST_USERS = ("sjobtest-alice", "sjobtest-bob")


def pytest_configure(config: pytest.Config) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root")
    if not Path("/run/systemd/system").is_dir():
        problems.append("systemd is not PID 1")
    if not Path(SJOB).exists():
        problems.append(f"{SJOB} is not installed (run install.sh first)")
    if problems:
        pytest.exit("integration tests cannot run here: " + "; ".join(problems), returncode=2)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def ensure_user(name: str) -> User:
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


def run(
    *args: str, user: User | None = None, cwd: str | None = None, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run a command, as `user` (through runuser, a fresh login-less session) if given."""
    argv = list(args)
    if user is not None:
        argv = ["runuser", "-u", user.name, "--", *argv]
        cwd = cwd or user.home
    return subprocess.run(argv, capture_output=True, cwd=cwd or "/", timeout=timeout, check=False, **kw)


def sjob(
    *args: str, user: User | None = None, cwd: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return run(SJOB, *args, user=user, cwd=cwd, timeout=timeout)


def sjob_units() -> set[str]:
    out = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "--type=service", "sjob-*").stdout.decode()
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def wait_until(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


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
    """Stop and forget every sjob unit a test leaves behind, so tests cannot leak into each other."""
    before = sjob_units()
    yield
    leftover = sjob_units() - before
    for unit in leftover:
        run("systemctl", "stop", unit)
        run("systemctl", "reset-failed", unit)


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
    return [json.loads(m) for m in data.split(b"\0")[:-1]]
