"""The function store (issue G): sealing what a build left (never following a link, refusing hard links and special
files), versions that stay as they were committed, and the units builds and calls become."""

import fcntl
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from supervisor import fnunits
from supervisor.auth import Principal
from supervisor.errors import SjobError
from supervisor.fnprotocol import FunctionSettings
from supervisor.fnstore import FunctionStore, copy_built
from supervisor.policy import FunctionsPolicy, OutputQuota
from supervisor.properties import ShimCommand
from supervisor.protocol import Limits

from .fakes import exec_entry, shipped_policy

ALICE = Principal(1000, 1000, 10, "alice")
SHIM = ShimCommand("/opt/sjob/bin/sjob-shim")


def test_a_build_is_copied_as_roots_files_never_following_a_link(tmp_path: Path) -> None:
    os.umask(old := os.umask(0o077))  # as sjobd runs (UMask=0077): the copy's modes must not depend on it
    os.umask(0o077)
    try:
        copy_and_check(tmp_path)
    finally:
        os.umask(old)


def copy_and_check(tmp_path: Path) -> None:
    out, into = tmp_path / "out", tmp_path / "into"
    (out / "venv" / "bin").mkdir(parents=True)
    (out / "venv" / "bin" / "tool").write_text("#!/bin/sh\n")
    (out / "venv" / "bin" / "tool").chmod(0o777)
    (out / "__pycache__").mkdir()
    (out / "__pycache__" / "main.pyc").write_bytes(b"pyc")
    (out / "__pycache__" / "main.pyc").chmod(0o666)
    (out / "elsewhere.txt").write_text("not part of a version")
    victim = tmp_path / "victim"
    victim.write_text("not the build's")
    (out / "venv" / "link").symlink_to(victim)
    into.mkdir()
    copy_built(out, into, ("__pycache__", "venv"))
    assert sorted(p.name for p in into.iterdir()) == ["__pycache__", "venv"]  # nothing else is taken
    assert stat.S_IMODE((into / "venv" / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE((into / "venv" / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((into / "__pycache__" / "main.pyc").stat().st_mode) == 0o644
    assert (into / "__pycache__" / "main.pyc").read_bytes() == b"pyc"
    assert os.readlink(into / "venv" / "link") == str(victim)  # a link stays a link
    assert (into / "venv" / "bin" / "tool").stat().st_ino != (out / "venv" / "bin" / "tool").stat().st_ino


def test_a_build_may_not_leave_special_files(tmp_path: Path) -> None:
    out, into = tmp_path / "out", tmp_path / "into"
    (out / "venv").mkdir(parents=True)
    os.mkfifo(out / "venv" / "pipe")
    into.mkdir()
    with pytest.raises(SjobError) as refused:
        copy_built(out, into, ("venv",))
    assert "special file" in refused.value.message


def test_a_file_the_build_holds_a_lease_on_fails_the_deploy_at_once(tmp_path: Path) -> None:
    """A lease would make root's open() wait for lease-break-time (45 s) per file, freezing sjobd (review of G)."""
    out, into = tmp_path / "out", tmp_path / "into"
    (out / "__pycache__").mkdir(parents=True)
    leased = out / "__pycache__" / "main.pyc"
    leased.write_bytes(b"x")
    into.mkdir()
    holder = os.open(leased, os.O_RDWR)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease's holder is told by SIGIO, which would end us
    try:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)  # broken by anyone's open: they wait for it
        started = time.monotonic()
        with pytest.raises(SjobError) as refused:
            copy_built(out, into, ("__pycache__",))
        assert time.monotonic() - started < 2
        assert "lease" in refused.value.message
    finally:
        os.close(holder)
        signal.signal(signal.SIGIO, previous)


def test_a_committed_version_is_what_was_staged_and_stays(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    old = os.umask(0o077)  # as sjobd runs: what builds and calls read must be readable to them all the same
    try:
        staging = store.stage("f", "1a2b3c4d", "print(1)\n", None)
        assert stat.S_IMODE(staging.src.stat().st_mode) == 0o755
        assert stat.S_IMODE((staging.src / "main.py").stat().st_mode) == 0o644
        (staging.out / "__pycache__").mkdir()
        (staging.out / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"pyc")
        store.take_build(staging, ("__pycache__", "venv"))
        function, version = store.commit(
            "f",
            staging,
            owner="alice",
            owner_uid=1000,
            deployed_by="alice",
            build_job="1a2b3c4d",
            settings=FunctionSettings(allow=["bob"]),
            default_concurrency=4,
            now_usec=5,
        )
        assert (function.version, function.allow, function.concurrency) == (1, ["bob"], 4)
        assert not staging.root.exists()
        directory = store.version_dir("f", 1)
        assert sorted(p.name for p in directory.iterdir()) == ["__pycache__", "main.py"]
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
        assert (version.size, version.requirements) == (len("print(1)\n"), False)
        # As read back: bool, not SQLite's 0 (asyncvarlink refuses an int for a bool: seen as an internal error)
        assert store.versions("f")[0] == version
        assert store.versions("f")[0].requirements is False
        assert deploy(store, "print(2)\n", owner="x") == 2
        again = store.get("f")
        assert again is not None
        assert (again.version, again.owner, again.allow) == (2, "alice", ["bob"])  # settings carry over
        assert (directory / "main.py").read_text() == "print(1)\n"
    finally:
        os.umask(old)
        store.close()


def deploy(store: FunctionStore, code: str, owner: str = "alice") -> int:
    """Stage, build (nothing) and commit `code` as function f; its version number."""
    staging = store.stage("f", "1a2b3c4d", code, None)
    store.take_build(staging, ("__pycache__", "venv"))
    function, _ = store.commit(
        "f",
        staging,
        owner=owner,
        owner_uid=1000,
        deployed_by="alice",
        build_job="1a2b3c4d",
        settings=FunctionSettings(),
        default_concurrency=4,
        now_usec=5,
    )
    return function.version


def test_a_version_left_without_a_record_does_not_block_the_next_deploy(tmp_path: Path) -> None:
    """A damaged functions.sqlite is set aside and a new one begins (statedb), but the versions' code stays on disk:
    deploying a known name again failed, its v1 being there already (as after sjobd was killed between a version's
    rename into place and its record)."""

    store = FunctionStore(tmp_path)
    assert deploy(store, "print(1)\n") == 1
    store.close()
    (tmp_path / "functions.sqlite").write_bytes(b"\0" * 8192)  # damaged: set aside at the next open
    store = FunctionStore(tmp_path)
    try:
        assert store.get("f") is None
        assert deploy(store, "print(2)\n") == 1
        assert (store.version_dir("f", 1) / "main.py").read_text() == "print(2)\n"
        # The stray version is kept (a call may still run it), beside the function's new one.
        (stray,) = (tmp_path / "functions" / "f").glob("v1.stray-*")
        assert (stray / "main.py").read_text() == "print(1)\n"
    finally:
        store.close()


def test_call_and_build_units() -> None:
    _, profiles = shipped_policy()
    policy = FunctionsPolicy(pip_args=("--no-index",))
    call = fnunits.call_unit(
        "sjob-1a2b3c4d.service", "1a2b3c4d", ALICE, "f", 3, "/var/lib/sjob/functions/f/v3", False, ["a b"],
        policy, Limits(memory_max=1 << 30), profiles.get("function"), SHIM, OutputQuota(), None,
    )  # fmt: skip
    props = dict(call.properties)
    assert props["DynamicUser"] is True
    assert "User" not in props
    assert props["BindReadOnlyPaths"] == [("/var/lib/sjob/functions/f/v3", fnunits.CODE_DIR, False, 0)]
    assert props["ProtectHome"] == "yes"
    assert props["PrivateNetwork"] is True
    assert props["WorkingDirectory"] == "/tmp"
    assert "SJOB_CALLER=alice" in props["Environment"]  # type: ignore[operator]
    _, argv, _ = exec_entry(call)
    command = argv[argv.index("--") + 1 :]
    assert command == ["/opt/sjob/runtime/bin/python3", "-I", "-u", "-c", fnunits.BOOT, "a b"]
    build_unit = fnunits.build_unit(
        "sjob-5e6f7a8b.service", "5e6f7a8b", ALICE, "/s/src", "/s/out", policy, Limits(),
        profiles.get("function-build"), SHIM, OutputQuota(),
    )  # fmt: skip
    build = dict(build_unit.properties)
    assert build["BindPaths"] == [("/s/out", fnunits.BUILD_DIR, False, 0)]
    assert build["BindReadOnlyPaths"] == [("/s/src", fnunits.CODE_DIR, False, 0)]
    assert build["PrivateNetwork"] is False  # pip needs the network
    assert build["Slice"] == "sjob-u1000.slice"
    assert exec_entry(build_unit)[1][-1] == "--no-index"
