"""Issue B, durability: jobs and their output outlive sjobd; records outlive sjobd and the units; reconciliation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import alone, in_journal, job_state, run, sjob, sjob_units, wait_until
from .test_skeleton import detach, status, wait_finished

WRITER = Path(__file__).with_name("writer.py")
STATE = Path("/var/lib/sjob")


def unit_state(job_id: str) -> bytes:
    return run("systemctl", "is-active", f"sjob-{job_id}.service").stdout.strip()


def unit_active(job_id: str) -> bool:
    return unit_state(job_id) in (b"active", b"activating")


@pytest.fixture
def sjobd_comes_back() -> Iterator[None]:
    """Whatever a test does to sjobd, leave it socket-activated and working."""
    alone("stopping or restarting sjobd")
    yield
    run("systemctl", "start", "sjobd.socket")
    wait_until(lambda: sjob("list").returncode == 0, what="sjobd to answer again")


@pytest.mark.serial("stops, restarts or kills sjobd")
@pytest.mark.usefixtures("sjobd_comes_back")
@pytest.mark.parametrize("how", ["stop", "restart", "kill -9"])
def test_jobs_and_output_outlive_sjobd(how: str, shared_dir: Path) -> None:
    # The job writes on while sjobd goes, and holds at line 30 until the test has seen it outlive sjobd: a restart
    # takes over 4 s in the VM, and a job of a fixed length could end meanwhile (seen in CI).
    go_on = shared_dir / "go-on"
    job_id = detach("python3", str(WRITER), "--lines", "60", "--pause", "0.1", "--hold-at", "30", "--until", str(go_on))
    wait_until(lambda: in_journal(job_id, b"line 5\n"), what="the job to write")
    assert b"line 5\n" in sjob("logs", job_id).stdout
    if how == "stop":
        run("systemctl", "stop", "sjobd.service")
    elif how == "restart":
        run("systemctl", "restart", "sjobd.service")
    else:
        run("systemctl", "kill", "-s", "KILL", "sjobd.service")
    assert unit_active(job_id)
    go_on.touch()
    info = wait_finished(job_id)
    assert (info["state"], info["exit_status"]) == ("exited", 0)
    assert sjob("logs", job_id).stdout == b"".join(b"line %d\n" % i for i in range(60))


@pytest.mark.serial("stops sjobd and its socket")
@pytest.mark.usefixtures("sjobd_comes_back")
def test_a_job_that_ends_while_sjobd_is_down_reports_its_true_result() -> None:
    job_id = detach("sh", "-c", "sleep 3; echo done; exit 4")
    run("systemctl", "stop", "sjobd.socket", "sjobd.service")  # nothing may start sjobd meanwhile
    # "failed", not merely "not active": while its ExecStopPost runs the unit is "deactivating", and resetting it
    # then does nothing (seen in CI).
    wait_until(lambda: unit_state(job_id) == b"failed", timeout=60, what="the job's unit to fail")
    # A failed unit stays loaded until someone resets it; with sjobd away, an admin does (or a reboot), and the
    # unit and everything systemd knew about it is gone.
    run("systemctl", "reset-failed", f"sjob-{job_id}.service")
    assert f"sjob-{job_id}.service" not in sjob_units()
    run("systemctl", "start", "sjobd.socket")
    info = wait_finished(job_id)
    assert (info["state"], info["exit_status"], info["result"]) == ("failed", 4, "exit-code")
    assert info["resources"]["cpu_usec"] > 0
    assert sjob("logs", job_id).stdout == b"done\n"


@pytest.mark.serial("stops sjobd and replaces its database")
@pytest.mark.aside  # about 45 s of trixie's serial phase: see conftest
@pytest.mark.usefixtures("sjobd_comes_back")
def test_damaged_records_are_set_aside_and_rebuilt_from_systemd_without_duplicates(tmp_path: Path) -> None:
    """A damaged jobs.sqlite (here: not a database at all) is moved aside, kept as it was, and sjobd adopts the jobs
    systemd runs, as it would with none. Before, sjobd failed at every start, until systemd gave up on it."""
    job_id = detach("sleep", "120")
    run("systemctl", "stop", "sjobd.socket", "sjobd.service")
    shutil.move(STATE / "jobs.sqlite", tmp_path / "jobs.sqlite")
    for wal in STATE.glob("jobs.sqlite-*"):
        wal.unlink()
    damaged = b"not a database: a disk that failed, or something else that wrote here\n" * 100
    (STATE / "jobs.sqlite").write_bytes(damaged)
    try:
        run("systemctl", "start", "sjobd.socket")
        for _ in range(2):  # restarting again must not adopt it twice
            listed = [j for j in json.loads(sjob("list", "--json", "--all").stdout) if j["id"] == job_id]
            assert len(listed) == 1
            assert listed[0]["state"] == "running"
            assert listed[0]["argv"] == ["/usr/bin/sleep", "120"]
            run("systemctl", "restart", "sjobd.service")
        (aside,) = STATE.glob("jobs.sqlite.damaged-*")
        assert aside.read_bytes() == damaged
        sjob("stop", job_id)
        assert wait_finished(job_id)["state"] == "stopped"
    finally:
        run("systemctl", "stop", "sjobd.socket", "sjobd.service")
        for stale in STATE.glob("jobs.sqlite*"):
            stale.unlink()
        shutil.move(tmp_path / "jobs.sqlite", STATE / "jobs.sqlite")


def test_finished_units_do_not_pile_up() -> None:
    ids = [detach("sh", "-c", f"exit {n}") for n in range(1, 9)]
    wait_until(lambda: all(job_state(j) not in ("starting", "running") for j in ids), what="the jobs to end")
    units = {f"sjob-{job_id}.service" for job_id in ids}
    wait_until(lambda: not units & sjob_units(), what="the failed units to be collected")
    assert [status(j)["exit_status"] for j in ids] == list(range(1, 9))
