"""The `sjob` command, as a user runs it, against a real server (with fakes behind it) on a temp socket."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakes import exec_entry
from .serverthread import ServerThread

SJOB = [sys.executable, "-c", "from supervisor.cli import main; main()"]


@pytest.fixture
def server() -> Iterator[ServerThread]:
    path = Path(tempfile.mkdtemp(prefix="sjob-cli-"))
    srv = ServerThread(path)
    yield srv
    srv.stop()
    shutil.rmtree(path)


def sjob(server: ServerThread, *args: str, cwd: str = "/") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SJOB_SOCKET": server.socket}
    return subprocess.run([*SJOB, *args], capture_output=True, env=env, cwd=cwd, timeout=60, check=False)


def test_run_attached_passes_output_and_status_through(server: ServerThread) -> None:
    result = sjob(server, "run", "--", "sh", "-c", "printf 'out\\r\\n\\n'; printf err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\r\n\n", b"err")
    (unit,) = server.units.started
    _, argv, _ = exec_entry(unit)
    assert argv[3] == shutil.which("sh")  # resolved with the caller's PATH, as systemd-run does


def test_run_without_double_dash_keeps_the_commands_options(server: ServerThread) -> None:
    result = sjob(server, "run", "sh", "-c", "echo $0-$1", "-x", "--help")
    assert (result.returncode, result.stdout) == (0, b"-x---help\n")


def test_signal_becomes_128_plus_n(server: ServerThread) -> None:
    result = sjob(server, "run", "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + 15
    assert b"SIGTERM" in result.stderr


def test_detach_status_and_list(server: ServerThread, tmp_path: Path) -> None:
    result = sjob(server, "run", "-d", "--", "true")
    assert result.returncode == 0
    job_id = result.stdout.decode().strip()
    assert len(job_id) == 8
    assert f"sjob-{job_id}.service".encode() in result.stderr
    status = sjob(server, "status", job_id, "--json")
    assert json.loads(status.stdout)["id"] == job_id
    human = sjob(server, "status", f"sjob-{job_id}.service")
    assert human.returncode == 0
    assert f"sjob-{job_id}.service".encode() in human.stdout
    listing = sjob(server, "list")
    assert job_id.encode() in listing.stdout
    assert json.loads(sjob(server, "list", "--json").stdout)[0]["id"] == job_id


def test_environment_and_working_directory(server: ServerThread, tmp_path: Path) -> None:
    result = sjob(server, "run", "-E", "GREETING=hi", "--working-directory", str(tmp_path), "--", "pwd")
    assert result.returncode == 0
    (unit,) = server.units.started
    assert unit.get("Environment") == ["GREETING=hi"]
    assert unit.get("WorkingDirectory") == str(tmp_path)


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["run", "--", "no-such-command-anywhere"], 127, b"command not found: no-such-command-anywhere"),
        (["run", "--", "./missing"], 127, b"does not exist"),
        (["status", "ffffffff"], 1, b"no job with id 'ffffffff'"),
        (["status", "../x"], 1, b"invalid job id"),
        (["run", "-E", "NO_SUCH_VARIABLE_HERE", "--", "true"], 1, b"no such variable"),
    ],
)
def test_bad_input_is_a_clear_error(server: ServerThread, args: list[str], status: int, words: bytes) -> None:
    result = sjob(server, *args)
    assert result.returncode == status
    assert words in result.stderr
    assert b"Traceback" not in result.stderr
    assert server.units.started == []


def test_no_daemon(tmp_path: Path) -> None:
    env = {**os.environ, "SJOB_SOCKET": str(tmp_path / "nothing-here")}
    result = subprocess.run([*SJOB, "list"], capture_output=True, env=env, timeout=60, check=False)
    assert result.returncode == 69
    assert b"cannot connect to sjobd" in result.stderr
    assert b"hint:" in result.stderr


FAST_PATH_CORPUS = [
    ["--", "echo", "hi"],
    ["echo", "-n", "hi"],
    ["-d", "sleep", "1"],
    ["-d", "-q", "--", "true"],
    ["--detach", "--quiet", "true"],
    ["-E", "A=1", "-E", "B", "env"],
    ["-EA=1", "env"],
    ["--setenv", "A=1", "env"],
    ["--setenv=A=1", "env"],
    ["--working-directory", "/tmp", "pwd"],
    ["--working-directory=/tmp", "pwd"],
    ["sh", "-c", "echo --detach"],
    ["--", "-d"],
    ["-E", "--", "true"],
    ["-", "x"],
    ["ls", "--help"],
    ["-q", "ls", "-d", "--", "x"],
]


@pytest.mark.parametrize("args", FAST_PATH_CORPUS, ids=" ".join)
def test_fast_path_parses_run_exactly_as_typer_does(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.cli import build_app, run  # noqa: PLC0415

    seen: list[run.RunArgs] = []

    def fake_run(parsed: run.RunArgs) -> int:
        seen.append(parsed)
        return 0

    monkeypatch.setattr(run, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["sjob", "run", *args])
    with pytest.raises(SystemExit) as exit_:
        build_app()()
    assert exit_.value.code == 0
    assert run.parse_fast(args) == seen[0]


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["-dq", "true"], ["--detatch", "true"], [], ["-E"], ["-d"]])
def test_fast_path_leaves_the_rest_to_typer(args: list[str]) -> None:
    from supervisor.cli import run  # noqa: PLC0415

    assert run.parse_fast(args) is None
