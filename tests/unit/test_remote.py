"""`sjob -H [USER@]HOST`: the ssh transport and `sjob --bridge`, against a real server on a temp socket. A fake ssh
($SJOB_SSH) records its arguments and runs the remote command on this machine, so the bytes really go through the
bridge's stdin and stdout, where no file descriptor can pass."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.errors import SjobError
from supervisor.remote import parse_host, ssh_command

from .fakes import exec_entry
from .serverthread import ServerThread
from .test_cli import SJOB, detach

FAKE_SSH = """#!/bin/sh
# A fake ssh: writes its arguments to $FAKE_SSH_LOG, then runs the remote command (after -- HOST) here.
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
while [ "$1" != "--" ]; do shift; done
shift 2
[ "$1" = sjob ] && shift
exec {python} -c 'from supervisor.cli import main; main()' "$@"
"""


@pytest.fixture
def ssh(tmp_path: Path) -> Path:
    script = tmp_path / "ssh"
    script.write_text(FAKE_SSH.format(python=sys.executable))
    script.chmod(0o755)
    return script


def remote(
    server: ServerThread, ssh: Path, *args: str, stdin: int | None = subprocess.DEVNULL, data: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SJOB_SOCKET": server.socket, "SJOB_SSH": str(ssh), "FAKE_SSH_LOG": f"{ssh}.log"}
    env.pop("SJOB_TOKEN", None)
    command = [*SJOB, "-H", "alice@box", *args]
    if data is not None:
        return subprocess.run(command, capture_output=True, env=env, cwd="/tmp", timeout=60, check=False, input=data)
    return subprocess.run(command, capture_output=True, env=env, cwd="/tmp", timeout=60, check=False, stdin=stdin)


def test_list_goes_through_ssh_and_the_bridge(server: ServerThread, ssh: Path) -> None:
    job = detach(server, "sleep", "30")
    result = remote(server, ssh, "list", "-q")
    assert (result.returncode, result.stdout) == (0, f"{job}\n".encode()), result.stderr
    assert Path(f"{ssh}.log").read_text() == "-xT -l alice -- box sjob --bridge\n"


def test_run_round_trip_streams_output_inline(server: ServerThread, ssh: Path) -> None:
    result = remote(server, ssh, "run", "--", "sh", "-c", "echo hi; printf err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"hi\n", b"err"), result.stderr
    (unit,) = server.units.started
    _, argv, _ = exec_entry(unit)
    assert argv[argv.index("--") + 1] == "sh"  # looked up there, in the unit's PATH, not in ours
    assert unit.get("WorkingDirectory") == "/"  # our directory is not the remote machine's


def test_logs_over_ssh(server: ServerThread, ssh: Path) -> None:
    job = detach(server, "sh", "-c", "printf 'a\\r\\n\\n'; printf b >&2")
    result = remote(server, ssh, "logs", "-f", job)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"a\r\n\n", b"b")


@pytest.mark.parametrize(
    ("args", "data", "words"),
    [
        (["run", "--pty", "--", "true"], None, b"--pty cannot work with -H"),
        (["run", "--", "cat"], b"data", b"cannot reach a job on alice@box"),
        (["run", "--working-directory", "rel", "--", "true"], None, b"absolute path with -H"),
    ],
)
def test_what_cannot_cross_ssh_is_refused(
    server: ServerThread, ssh: Path, args: list[str], data: bytes | None, words: bytes
) -> None:
    result = remote(server, ssh, *args, data=data)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert server.units.started == []


def test_piped_stdin_with_no_stdin_runs(server: ServerThread, ssh: Path) -> None:
    result = remote(server, ssh, "run", "-n", "--", "echo", "ok", data=b"ignored")
    assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr


@pytest.mark.parametrize(
    ("status", "words"),
    [(255, b"ssh could not reach alice@box"), (127, b"sjob is not installed on alice@box"), (0, b"lost")],
)
def test_a_failed_session_says_why(server: ServerThread, tmp_path: Path, status: int, words: bytes) -> None:
    ssh = tmp_path / "ssh"
    ssh.write_text(f"#!/bin/sh\nexit {status}\n")
    ssh.chmod(0o755)
    result = remote(server, ssh, "list")
    assert result.returncode == 69
    assert words in result.stderr


def test_bridge_without_sjobd(tmp_path: Path) -> None:
    env = {**os.environ, "SJOB_SOCKET": str(tmp_path / "none")}
    result = subprocess.run([*SJOB, "--bridge"], capture_output=True, env=env, timeout=30, check=False)
    assert result.returncode == 69
    assert b"cannot connect to sjobd" in result.stderr


def test_json_status_over_ssh(server: ServerThread, ssh: Path) -> None:
    job = detach(server, "true")
    result = remote(server, ssh, "status", "--json", job)
    assert json.loads(result.stdout)["id"] == job


@pytest.mark.parametrize("text", ["", "@box", "alice@", "-oProxyCommand=x", "alice@-x", "a b", "a\nb"])
def test_hosts_that_are_not_hosts_are_refused(text: str) -> None:
    with pytest.raises(SjobError):
        parse_host(text)


def test_ssh_command_takes_sjob_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJOB_SSH", "ssh -o 'StrictHostKeyChecking no' -p 2222")
    assert ssh_command("build1") == [
        "ssh", "-o", "StrictHostKeyChecking no", "-p", "2222", "-xT", "--", "build1", "sjob", "--bridge"
    ]  # fmt: skip


def test_usage_errors_of_the_global_option() -> None:
    for args in (["-H"], ["-H", "box"], ["--host=-x", "list"]):
        result = subprocess.run([*SJOB, *args], capture_output=True, timeout=30, check=False)
        assert result.returncode == 2, (args, result.stderr)


def test_ctrl_c_stops_the_remote_job_as_locally(server: ServerThread, ssh: Path) -> None:
    env = {**os.environ, "SJOB_SOCKET": server.socket, "SJOB_SSH": str(ssh), "FAKE_SSH_LOG": f"{ssh}.log"}
    command = [*SJOB, "-H", "box", "run", "--", "sh", "-c", "echo started; sleep 30"]
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as p:
        assert p.stdout is not None
        assert p.stdout.readline() == b"started\n"
        p.send_signal(signal.SIGINT)  # to sjob alone: ssh ignores SIGINT and carries the Stop
        _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert b"stopping job" in err
    (unit,) = server.units.started
    assert server.units.stopped == [unit.name]
