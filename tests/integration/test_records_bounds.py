"""Issue E, section 4, on real systemd: sjobd's records stay bounded, and a full disk refuses new jobs clearly
while sjobd keeps serving."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import User, alone, run, sjob
from .test_access import POLICY, policy_edit  # noqa: F401 - a fixture

pytestmark = pytest.mark.serial("edits policy.toml; puts sjobd's state on a small tmpfs and restarts it")
STATE = Path("/var/lib/sjob")


def test_each_user_keeps_at_most_keep_per_user_finished_records(bob: User, policy_edit: Any) -> None:  # noqa: F811
    text = POLICY.read_text()
    assert "keep_per_user = 1000" in text
    policy_edit(text.replace("keep_per_user = 1000", "keep_per_user = 3"))
    ids = []
    for _ in range(5):
        result = sjob("run", "-d", "--", "true", user=bob)
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.decode().split()[0])
        sjob("logs", "-f", ids[-1], user=bob)  # until it has ended
    listed = json.loads(sjob("list", "--json", user=bob).stdout)
    finished = [job["id"] for job in listed if job["state"] not in ("starting", "running")]
    assert len(finished) <= 3, listed
    assert finished[0] == ids[-1]
    assert ids[0] not in [job["id"] for job in listed]


@pytest.fixture
def small_state_dir() -> Iterator[Path]:
    """sjobd's state directory on a tmpfs holding a copy of the real one and 16 MiB more; the real one comes back
    after. (The copy holds what earlier tests left, deployed functions' environments too: a fixed 16 MiB was
    too small for it once the function tests had run.)"""
    alone("mounting over sjobd's state directory")
    run("systemctl", "stop", "sjobd.service")
    saved = Path(tempfile.mkdtemp(prefix="sjob-state-"))
    shutil.copytree(STATE, saved / "sjob", symlinks=True)
    used = int(run("du", "-s", "--block-size=1", str(STATE)).stdout.split()[0])
    size = f"size={used * 2 + 16 * 2**20},mode=0700"  # du's blocks are not tmpfs' pages: room for both
    assert run("mount", "-t", "tmpfs", "-o", size, "tmpfs", str(STATE)).returncode == 0
    try:
        shutil.copytree(saved / "sjob", STATE, symlinks=True, dirs_exist_ok=True)
        yield STATE
    finally:
        run("systemctl", "stop", "sjobd.service")
        run("umount", str(STATE))
        shutil.rmtree(saved)
        assert sjob("list").returncode == 0  # socket activation brings sjobd back on the real directory


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False)
    return filler


def test_a_full_disk_refuses_new_jobs_clearly_and_sjobd_serves_on(alice: User, small_state_dir: Path) -> None:
    first = sjob("run", "--", "echo", "before", user=alice)
    assert (first.returncode, first.stdout) == (0, b"before\n"), first.stderr
    filler = fill(small_state_dir)
    refused = sjob("run", "--", "echo", "x" * 50_000, user=alice)
    assert refused.returncode != 0
    assert b"cannot write its job records" in refused.stderr, refused.stderr
    assert b"df -h" in refused.stderr
    assert b"Traceback" not in refused.stderr
    assert run("systemctl", "is-active", "sjobd.service").stdout.strip() == b"active"
    assert sjob("list", user=alice).returncode == 0  # reads go on
    assert not re.search(rb"InternalError", refused.stderr)
    filler.unlink()
    again = sjob("run", "--", "echo", "after", user=alice)
    assert (again.returncode, again.stdout) == (0, b"after\n"), again.stderr
