"""Issue A on real systemd: run, exit status, identity, systemctl/journalctl views, list/status, socket activation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from .conftest import SOCKET, User, job_state, run, sjob, sjob_units, varlink_call, wait_until


def detach(*argv: str, user: User | None = None, cwd: str | None = None, options: Sequence[str] = ()) -> str:
    result = sjob("run", "-d", *options, "--", *argv, user=user, cwd=cwd)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{8}", job_id), result.stdout
    return job_id


def status(job_id: str, user: User | None = None) -> dict[str, Any]:
    result = sjob("status", "--json", job_id, user=user)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def wait_finished(job_id: str, user: User | None = None) -> dict[str, Any]:
    wait_until(lambda: job_state(job_id, user) not in ("starting", "running"), what=f"job {job_id} to end")
    return status(job_id, user)


def test_echo_hello() -> None:
    result = sjob("run", "--", "echo", "hello")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hello\n", b"")


def test_exit_status_passes_through() -> None:
    assert sjob("run", "--", "sh", "-c", "exit 3").returncode == 3


def test_killed_by_signal_is_128_plus_n() -> None:
    result = sjob("run", "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + 9
    assert b"SIGKILL" in result.stderr


@pytest.mark.serial("compares the set of all sjob units")
def test_missing_command_is_a_clear_error_and_leaves_no_unit() -> None:
    before = sjob_units()
    result = sjob("run", "--", "no-such-command-xyz")
    assert result.returncode == 127
    assert b"command not found: no-such-command-xyz" in result.stderr
    assert b"Traceback" not in result.stderr
    assert sjob_units() == before


def test_missing_executable_sent_raw_fails_cleanly_and_the_unit_is_collected() -> None:
    # A client that skips the CLI's PATH lookup: the shim cannot execute it, the job fails with 127 like a shell,
    # and sjobd records it and resets the failed unit.
    (reply,) = varlink_call("io.sjob.Jobs.Start", {"spec": {"argv": ["/nonexistent/bin"], "cwd": "/"}})
    job = reply["parameters"]["job"]
    final = wait_finished(job["id"])
    assert (final["state"], final["exit_status"]) == ("failed", 127)
    logs = sjob("run", "--", "true")  # keep using sjob meanwhile; it must be unaffected
    assert logs.returncode == 0
    wait_until(lambda: job["unit"] not in sjob_units(), what=f"{job['unit']} to be collected")


@pytest.mark.serial("compares the set of all sjob units")
def test_missing_working_directory_says_so(alice: User) -> None:
    before = sjob_units()
    result = sjob("run", "--working-directory", "/nonexistent-dir", "--", "true", user=alice)
    assert result.returncode == 1
    assert b"working directory" in result.stderr
    assert b"/nonexistent-dir" in result.stderr
    wait_until(lambda: sjob_units() == before, what="the failed unit to be collected")


def test_job_runs_as_the_calling_user(alice: User) -> None:
    result = sjob("run", "--", "id", "-u", user=alice)
    assert (result.returncode, result.stdout) == (0, f"{alice.uid}\n".encode())
    job_id = detach("sleep", "30", user=alice)
    unit = f"sjob-{job_id}.service"
    shown = run("systemctl", "show", "-p", "User", "-p", "Group", "--value", unit).stdout.decode().split()
    assert shown == [str(alice.uid), str(alice.gid)]
    main_pid = run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.decode().strip()
    owner = run("ps", "-o", "uid=", "-p", main_pid).stdout.decode().strip()
    assert owner == str(alice.uid)


@pytest.mark.parametrize(
    "parameters",
    [
        {"spec": {"argv": ["/usr/bin/id", "-u"], "cwd": "/", "user": "root"}},
        {"spec": {"argv": ["/usr/bin/id", "-u"], "cwd": "/", "uid": 0}},
        {"spec": {"argv": ["/usr/bin/id", "-u"], "cwd": "/"}, "uid": 0},
        {"spec": {"argv": ["/usr/bin/id", "-u"], "cwd": "/", "properties": {"User": "root"}}},
    ],
)
def test_nothing_a_user_sends_makes_the_job_root(alice: User, parameters: dict[str, object]) -> None:
    (reply,) = varlink_call("io.sjob.Jobs.Start", parameters, user=alice)
    assert reply.get("error") == "org.varlink.service.InvalidParameter", reply


def test_environment_cannot_change_identity(alice: User) -> None:
    result = sjob("run", "-E", "USER=root", "-E", "HOME=/root", "--", "id", "-u", user=alice)
    assert (result.returncode, result.stdout) == (0, f"{alice.uid}\n".encode())


def test_systemctl_and_journalctl_show_the_job(alice: User) -> None:
    job_id = detach("sh", "-c", "echo visible-in-journal; sleep 30", user=alice)
    unit = f"sjob-{job_id}.service"
    shown = run("systemctl", "status", "--no-pager", unit)
    assert shown.returncode == 0, shown.stdout
    text = shown.stdout.decode()
    assert f"sjob {job_id} by {alice.name} (uid {alice.uid})" in text
    assert "echo visible-in-journal" in text
    wait_until(
        lambda: b"visible-in-journal" in run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout,
        what="the output to reach journalctl -u",
    )


def test_list_and_status(alice: User, bob: User) -> None:
    job_id = detach("sleep", "30", user=alice)
    listed = sjob("list", user=alice)
    assert listed.returncode == 0
    assert job_id.encode() in listed.stdout
    info = status(job_id, alice)
    assert (info["state"], info["user"], info["uid"]) == ("running", alice.name, alice.uid)
    # Another user's job looks exactly like a missing one.
    theirs = sjob("status", job_id, user=bob)
    missing = sjob("status", "ffffffff", user=bob)
    assert theirs.returncode == missing.returncode == 66
    assert theirs.stderr.replace(job_id.encode(), b"ID") == missing.stderr.replace(b"ffffffff", b"ID")
    assert job_id.encode() not in sjob("list", user=bob).stdout


def test_status_of_unknown_or_malformed_ids_fails_cleanly() -> None:
    for job_id in ("ffffffff", "../x", "sshd.service", "a@b", "x" * 300, "ünïcode"):
        result = sjob("status", job_id)
        assert result.returncode == (66 if job_id == "ffffffff" else 2), job_id  # not found, or not an id at all
        assert result.stderr.startswith(b"sjob: "), result.stderr
        assert b"Traceback" not in result.stderr


def test_finished_job_is_recorded_with_its_result() -> None:
    job_id = detach("sh", "-c", "exit 5")
    final = wait_finished(job_id)
    assert (final["state"], final["exit_status"], final["result"]) == ("failed", 5, "exit-code")
    assert f"sjob-{job_id}.service" not in sjob_units()  # collected once recorded


def test_arguments_reach_the_job_literally() -> None:
    args = ["$HOME", "${PATH}", "%h", "%%", "a b", "", "'quoted'", "\\back"]
    result = sjob("run", "--", "printf", "[%s]", *args)
    assert result.stdout.decode() == "".join(f"[{a}]" for a in args)


def test_environment_reaches_the_job_literally() -> None:
    result = sjob(
        "run",
        "-E",
        "RATIO=50%",
        "-E",
        "SPEC=%h",
        "-E",
        "DOLLAR=$HOME",
        "--",
        "sh",
        "-c",
        'printf "%s|%s|%s" "$RATIO" "$SPEC" "$DOLLAR"',
    )
    assert result.stdout == b"50%|%h|$HOME"


def test_output_streams_are_exact_through_journald() -> None:
    script = "printf '\\n\\nblank\\ntrailing  \\ncrlf\\r\\n<3>prefix\\nno newline'; printf 'err\\n' >&2"
    result = sjob("run", "--", "sh", "-c", script)
    assert result.stdout == b"\n\nblank\ntrailing  \ncrlf\r\n<3>prefix\nno newline"
    assert result.stderr == b"err\n"


@pytest.mark.serial("stops sjobd")
def test_sjobd_is_started_by_its_socket() -> None:
    run("systemctl", "stop", "sjobd.service")
    state = run("systemctl", "is-active", "sjobd.service").stdout.strip()
    why = run("journalctl", "-u", "sjobd.service", "-n", "40", "--no-pager").stdout.decode(errors="replace")
    assert state == b"inactive", why
    assert run("systemctl", "is-active", "sjobd.socket").stdout.strip() == b"active"
    assert sjob("list").returncode == 0
    assert run("systemctl", "is-active", "sjobd.service").stdout.strip() == b"active"


@pytest.mark.skipif(shutil.which("varlinkctl") is None, reason="varlinkctl arrived in systemd 255 (trixie has it)")
def test_varlinkctl_introspects_the_interface() -> None:
    result = subprocess.run(["varlinkctl", "introspect", SOCKET, "io.sjob.Jobs"], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    for needle in (b"interface io.sjob.Jobs", b"method Start", b"method Follow", b"error NoSuchJob"):
        assert needle in result.stdout
