"""The function store (issue G): sealing what a build left (never following a link, refusing hard links and special
files), versions that stay as they were committed, and the units builds and calls become."""

import os
import stat
from pathlib import Path

import pytest

from supervisor import fnunits
from supervisor.auth import Principal
from supervisor.errors import SjobError
from supervisor.fnprotocol import FunctionSettings
from supervisor.fnstore import FunctionStore, seal
from supervisor.policy import FunctionsPolicy, OutputQuota
from supervisor.properties import ShimCommand
from supervisor.protocol import Limits

from .fakes import exec_entry, shipped_policy

ALICE = Principal(1000, 1000, 10, "alice")
SHIM = ShimCommand("/opt/sjob/bin/sjob-shim")


def test_seal_makes_everything_roots_and_read_only_without_following_links(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "venv" / "bin").mkdir(parents=True)
    (out / "venv" / "bin" / "tool").write_text("#!/bin/sh\n")
    (out / "venv" / "bin" / "tool").chmod(0o777)
    (out / "data").write_text("x")
    (out / "data").chmod(0o666)
    victim = tmp_path / "victim"
    victim.write_text("not the build's")
    victim.chmod(0o600)
    (out / "link").symlink_to(victim)
    os.chown(victim, 1234, 1234)
    seal(out)
    assert stat.S_IMODE((out / "venv" / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "data").stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert os.readlink(out / "link") == str(victim)
    # The link's target is not the build's: neither its owner nor its mode changed.
    assert (victim.stat().st_uid, stat.S_IMODE(victim.stat().st_mode)) == (1234, 0o600)


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_seal_refuses_what_a_build_may_not_leave(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if kind == "hard link":
        (tmp_path / "elsewhere").write_text("x")
        os.link(tmp_path / "elsewhere", out / "linked")
    else:
        os.mkfifo(out / "pipe")
    with pytest.raises(SjobError) as refused:
        seal(out)
    assert kind.rsplit(maxsplit=1)[-1] in refused.value.message or "special" in refused.value.message


def test_a_committed_version_is_what_was_staged_and_stays(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    try:
        staging = store.stage("f", "1a2b3c4d", "print(1)\n", None)
        (staging.out / "__pycache__").mkdir()
        (staging.out / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"pyc")
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
        assert (version.size, version.requirements) == (len("print(1)\n"), False)
        second = store.stage("f", "5e6f7a8b", "print(2)\n", None)
        store.commit(
            "f",
            second,
            owner="x",
            owner_uid=1,
            deployed_by="alice",
            build_job="5e6f7a8b",
            settings=FunctionSettings(),
            default_concurrency=4,
            now_usec=6,
        )
        again = store.get("f")
        assert again is not None
        assert (again.version, again.owner, again.allow) == (2, "alice", ["bob"])  # settings carry over
        assert (directory / "main.py").read_text() == "print(1)\n"
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
