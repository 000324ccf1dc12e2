"""The `sjob` command, as a user runs it, against a real server (with fakes behind it) on a temp socket."""

import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from .fakes import exec_entry
from .serverthread import ServerThread

SJOB = [sys.executable, "-c", "from supervisor.cli import main; main()"]


def sjob(server: ServerThread, *args: str, cwd: str = "/") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SJOB_SOCKET": server.socket}
    return subprocess.run([*SJOB, *args], capture_output=True, env=env, cwd=cwd, timeout=60, check=False)


def test_run_attached_passes_output_and_status_through(server: ServerThread) -> None:
    result = sjob(server, "run", "--", "sh", "-c", "printf 'out\\r\\n\\n'; printf err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\r\n\n", b"err")
    (unit,) = server.units.started
    _, argv, _ = exec_entry(unit)
    assert argv[argv.index("--") + 1] == shutil.which("sh")  # resolved with the caller's PATH, as systemd-run does


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
        (["status", "ffffffff"], 66, b"no job with id 'ffffffff'"),
        (["status", "../x"], 2, b"invalid job id"),
        (["run", "-E", "NO_SUCH_VARIABLE_HERE", "--", "true"], 2, b"no such variable"),
        (["run"], 2, b"no command to run"),
        (["run", "--frobnicate", "true"], 2, b"sjob run: unrecognized arguments: --frobnicate"),
        (["run", "--det", "true"], 2, b"sjob run: unrecognized arguments: --det"),
        (["stop"], 2, b"sjob stop: the following arguments are required: ID"),
        (["stop", "--grace"], 2, b"sjob stop: argument --grace: expected one argument"),
        (["frobnicate"], 2, b"sjob: unknown command 'frobnicate'"),
        (["lsit"], 2, b"(did you mean 'list'?)"),
        (["--frobnicate"], 2, b"sjob: unknown option '--frobnicate'"),
        (["token", "issue"], 2, b"the following arguments are required: --subject"),
        (["completion", "tcsh"], 2, b"invalid choice: 'tcsh'"),
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


def wait_for_job(server: ServerThread) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = json.loads(sjob(server, "list", "--json").stdout)
        if listed and listed[0]["state"] == "running" and server.units.processes:
            return str(listed[0]["id"])
        time.sleep(0.1)
    raise AssertionError("the job did not start")


def test_logs_prints_each_stream_exactly(server: ServerThread) -> None:
    script = "printf 'o1\\n'; printf 'e1' >&2; printf 'o2\\r\\n'"
    job_id = sjob(server, "run", "-d", "--", "sh", "-c", script).stdout.decode().strip()
    assert sjob(server, "logs", "-f", job_id).returncode == 0  # waits for the end
    both = sjob(server, "logs", job_id)
    assert (both.stdout, both.stderr) == (b"o1\no2\r\n", b"e1")
    assert sjob(server, "logs", "--stderr", job_id).stdout == b""
    assert sjob(server, "logs", "--stdout", job_id).stderr == b""
    entries = [json.loads(line) for line in sjob(server, "logs", "--json", job_id).stdout.splitlines()]
    assert "".join(e["text"] for e in entries if e["stream"] == "stdout") == "o1\no2\r\n"
    assert all(e["usec"] and e["timestamp"] for e in entries)


def test_logs_follow_exits_with_the_jobs_status(server: ServerThread) -> None:
    job_id = sjob(server, "run", "-d", "--", "sh", "-c", "sleep 0.5; exit 7").stdout.decode().strip()
    assert sjob(server, "logs", "-f", job_id).returncode == 7


def test_stop_and_signal(server: ServerThread) -> None:
    job_id = sjob(server, "run", "-d", "--", "sleep", "30").stdout.decode().strip()
    wait_for_job(server)
    signalled = sjob(server, "stop", "--signal", "CONT", job_id)
    assert (signalled.returncode, signalled.stdout) == (0, f"sent SIGCONT to job {job_id}\n".encode())
    stopped = sjob(server, "stop", "--grace", "10s", job_id)
    assert stopped.returncode == 0
    assert stopped.stdout == f"job {job_id} stopped (signal SIGTERM)\n".encode()
    again = sjob(server, "stop", job_id)
    assert (again.returncode, again.stdout) == (
        0,
        f"job {job_id} has already ended (stopped (signal SIGTERM)); nothing to stop\n".encode(),
    )
    assert b"Why: stopped by" in sjob(server, "status", job_id).stdout
    bad = sjob(server, "stop", "--signal", "NOPE", job_id)
    assert (bad.returncode, bad.stderr.splitlines()[0]) == (2, b"sjob: unknown signal 'NOPE'")


@pytest.mark.parametrize("verb", ["run", "logs"])
def test_output_arrives_while_the_job_runs(server: ServerThread, verb: str) -> None:
    # Each line must be printed as it is written, not held back until the job writes the next one or ends.
    env = {**os.environ, "SJOB_SOCKET": server.socket}
    command = ["sh", "-c", "echo first; sleep 30"]
    if verb == "run":
        argv = [*SJOB, "run", "--", *command]
    else:
        argv = [*SJOB, "logs", "-f", sjob(server, "run", "-d", "-q", "--", *command).stdout.decode().strip()]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            assert select.select([proc.stdout], [], [], 20)[0], "no output within 20 s"
            assert proc.stdout.readline() == b"first\n"
            assert proc.poll() is None
        finally:
            proc.kill()
    (job,) = json.loads(sjob(server, "list", "--json").stdout)
    sjob(server, "stop", "--grace", "0", job["id"])


# Ctrl-C reaches a command on a terminal with SIGINT at its default. A test run from a non-interactive shell's
# background (`tests/run &`) inherits SIGINT ignored, and Python then leaves it ignored, as every program should:
# sjob never saw the test's SIGINT and exited 0 when the job's sleep ended (reproduced with `trap '' INT`).
SJOB_ON_A_TERMINAL = [
    sys.executable,
    "-c",
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from supervisor.cli import main; main()",
]


def test_ctrl_c_stops_an_attached_job(server: ServerThread) -> None:
    env = {**os.environ, "SJOB_SOCKET": server.socket}
    proc = subprocess.Popen(
        [*SJOB_ON_A_TERMINAL, "run", "--", "sh", "-c", "echo started; sleep 30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_job(server)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert out == b"started\n"
    assert b"stopping job" in err
    assert b"stopped by" in err
    (job,) = json.loads(sjob(server, "list", "--json").stdout)
    assert job["state"] == "stopped"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--memory", "-5"], b"--memory '-5': not a size"),
        (["--memory", "0"], b"--memory '0': must be more than zero"),
        (["--memory", "12Q"], b"--memory '12Q': not a size"),
        (["--memory", str(2**70)], b"too large"),
        (["--cpu", "abc"], b"--cpu 'abc': not a CPU amount"),
        (["--cpu", "0%"], b"--cpu '0%': out of range"),
        (["--cpu", "1000%"], b"--cpu 1000% is above what policy allows you (400%)"),
        (["--memory", "64G"], b"--memory 64G is above what policy allows you (8G)"),
        (["--tasks", "0"], b"--tasks '0': out of range"),
        (["--tasks", "2^70"], b"--tasks '2^70': not a number of tasks"),
        (["--timeout", "0"], b"--timeout '0': must be more than zero"),
        (["--timeout", "5 fortnights"], b"--timeout '5 fortnights': not a duration"),
        (["--cpu-weight", "10001"], b"--cpu-weight '10001': out of range"),
        (["--io-read-bps", "10M"], b"--io-read-bps '10M': expected DEVICE=RATE"),
        (["--io-read-bps", "/nonexistent=10M"], b"--io-read-bps /nonexistent: no such file or directory"),
        (["--io-read-bps", "/proc=10M"], b"--io-read-bps /proc: not on a block device"),
        (["--profile", "nope"], b"unknown profile 'nope'"),
        (["--allowed-cpus", "x"], b"--allowed-cpus 'x': not a list of CPUs"),
        (["--allowed-cpus", "1-0"], b"--allowed-cpus '1-0': 1-0 is not a range of CPU numbers"),
        (["--allowed-cpus", "4000"], b"--allowed-cpus: this machine has no CPU 4000 online"),
    ],
)
def test_bad_limits_are_refused_before_any_unit_exists(server: ServerThread, options: list[str], words: bytes) -> None:
    result = sjob(server, "run", *options, "--", "true")
    assert result.returncode == (77 if b"policy" in words else 2), result.stderr
    assert words in result.stderr
    assert b"Traceback" not in result.stderr
    assert server.units.started == []


def test_limits_and_profile_reach_the_unit_and_the_record(server: ServerThread) -> None:
    job_id = sjob(
        server,
        "run",
        "-d",
        "-q",
        "--cpu",
        "20%",
        "--memory",
        "512M",
        "--allowed-cpus",
        "0",
        "-p",
        "network",
        "--",
        "true",
    )
    (unit,) = server.units.started
    assert (unit.get("CPUQuotaPerSecUSec"), unit.get("MemoryMax"), unit.get("PrivateNetwork")) == (
        200_000,
        512 << 20,
        False,
    )
    info = json.loads(sjob(server, "status", "--json", job_id.stdout.decode().strip()).stdout)
    assert (info["profile"], info["limits"]["cpu_percent"], info["limits"]["tasks_max"]) == ("network", 20, 1024)
    human = sjob(server, "status", job_id.stdout.decode().strip()).stdout.decode()
    assert "Limits: CPU 20%; on CPUs 0; memory 512.0M; tasks 1024" in human
    assert "Sandbox: profile network" in human


def detach(server: ServerThread, *command: str) -> str:
    result = sjob(server, "run", "-d", "-q", "--", *command)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def test_wait_exits_with_the_last_jobs_status(server: ServerThread) -> None:
    first, second = detach(server, "sh", "-c", "sleep 0.3; exit 3"), detach(server, "sh", "-c", "exit 5")
    assert sjob(server, "wait", first, second).returncode == 5
    assert sjob(server, "wait", second, first).returncode == 3  # ended jobs count at once
    ended = json.loads(sjob(server, "wait", "--json", first).stdout)
    assert [(j["id"], j["state"], j["exit_status"]) for j in ended] == [(first, "failed", 3)]
    killed = detach(server, "sh", "-c", "kill -KILL $$")
    assert sjob(server, "wait", killed).returncode == 128 + 9


def test_wait_refuses_unknown_ids_before_waiting_and_can_time_out(server: ServerThread) -> None:
    running = detach(server, "sleep", "30")
    unknown = sjob(server, "wait", running, "ffffffff")
    assert (unknown.returncode, unknown.stderr.splitlines()[0]) == (66, b"sjob: no job with id 'ffffffff'")
    started = time.monotonic()
    late = sjob(server, "wait", "--timeout", "500ms", running)
    assert (late.returncode, late.stderr) == (124, f"sjob: job {running} has not ended within 500ms\n".encode())
    assert time.monotonic() - started < 10
    sjob(server, "stop", "--grace", "0", running)


def test_run_detached_and_stop_speak_json(server: ServerThread) -> None:
    started = sjob(server, "run", "-d", "--json", "--", "sleep", "30")
    job = json.loads(started.stdout)
    assert (job["state"], job["unit"], started.stderr) == ("running", f"sjob-{job['id']}.service", b"")
    stopped = json.loads(sjob(server, "stop", "--json", "--grace", "5s", job["id"]).stdout)
    assert (stopped["id"], stopped["state"], stopped["signal"]) == (job["id"], "stopped", 15)
    again = json.loads(sjob(server, "stop", "--json", job["id"]).stdout)
    assert again["state"] == "stopped"


def test_piped_list_is_plain_columns_one_line_per_job(server: ServerThread) -> None:
    long_command = ["sh", "-c", "exit 0", "x" * 300, "two\nlines"]
    ids = [detach(server, *long_command), detach(server, "true"), detach(server, "false")]
    for job_id in ids:
        sjob(server, "wait", job_id)
    lines = sjob(server, "list").stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "STATE", "AGE", "OWNER", "COMMAND"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1]  # newest first, one line each
    assert lines[-1].endswith("x" * 300 + " 'two\\nlines'")  # at full width, and escaped
    assert "\x1b" not in "".join(lines)
    column = lines[0].index("COMMAND")
    assert all(line[column] == "/" and line[column - 2 : column] == "  " for line in lines[1:])  # aligned
    assert sjob(server, "list", "-q").stdout.decode().split() == ids[::-1]
    assert sjob(server, "list", "-q", "-n", "2").stdout.decode().split() == ids[:0:-1]
    assert len(json.loads(sjob(server, "list", "--json", "-n", "1").stdout)) == 1
    bad = sjob(server, "list", "-n", "0")
    assert (bad.returncode, bad.stderr.splitlines()[0]) == (2, b"sjob: -n '0': out of range")


def on_a_terminal(server: ServerThread, *args: str, env: dict[str, str] | None = None) -> str:
    """What `sjob ARGS` writes to a terminal of 80 columns (stdout and stderr both on it)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    environ |= {"SJOB_SOCKET": server.socket, "TERM": "xterm", **(env or {})}
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with subprocess.Popen([*SJOB, *args], stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=environ) as p:
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            output += chunk
        p.wait(60)
    os.close(controller)
    return output.decode()


def test_list_on_a_terminal_fits_it_and_has_colour_unless_told_not_to(server: ServerThread) -> None:
    job_id = detach(server, "sh", "-c", "exit 0", "y" * 300)
    sjob(server, "wait", job_id)
    coloured = on_a_terminal(server, "list")
    assert "\x1b[" in coloured
    assert all(len(line) <= 80 for line in coloured.splitlines() if "\x1b" not in line)
    for env in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
        plain = on_a_terminal(server, "list", env=env)
        assert job_id in plain
        assert "\x1b[" not in plain, env


def test_stop_says_on_a_terminal_that_it_waits_and_when_sigkill_goes_out(server: ServerThread) -> None:
    job_id = detach(server, "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    wait_for_job(server)
    said = on_a_terminal(server, "stop", "--grace", "1s", job_id)
    assert f"sjob: SIGTERM sent to job {job_id}; waiting for it to end, SIGKILL in 1s" in said
    assert f"sjob: job {job_id} is still there after the grace period: SIGKILL sent" in said
    assert f"job {job_id} stopped (signal SIGKILL)" in said
    quiet = sjob(server, "stop", detach(server, "sleep", "30"))
    assert quiet.stderr == b""  # piped: only the result


def test_a_reader_that_goes_away_ends_sjob_quietly(server: ServerThread) -> None:
    job_id = detach(server, "sh", "-c", "yes | head -c 2000000")
    sjob(server, "wait", job_id)
    env = {**os.environ, "SJOB_SOCKET": server.socket}
    with subprocess.Popen([*SJOB, "logs", job_id], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        proc.stdout.read(10)
        proc.stdout.close()
        assert proc.wait(30) == 141
        assert proc.stderr is not None
        assert proc.stderr.read() == b""
