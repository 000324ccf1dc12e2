"""Sandbox profiles: what the shipped ones hide from a job, and how path lists are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from dbus_fast import Variant

from supervisor import profiles
from supervisor.properties import SIGNATURES

from .fakes import shipped_policy

_, PROFILES = shipped_policy()
HIDDEN = {"-/run/sjob", "-/run/dbus/system_bus_socket", "-/run/user"}


@pytest.mark.parametrize("name", ["strict", "network"])
def test_jobs_see_neither_sjobd_nor_the_buses(name: str) -> None:
    hidden = dict(PROFILES.get(name).properties)["InaccessiblePaths"]
    assert isinstance(hidden, list)
    assert set(hidden) >= HIDDEN
    Variant(SIGNATURES["InaccessiblePaths"], hidden)


@pytest.mark.parametrize("value", [["run/sjob"], ["-relative"], "/run/sjob", [""], ["/a\nb"]])
def test_inaccessible_paths_must_be_absolute(tmp_path: Path, value: object) -> None:
    (tmp_path / "odd.toml").write_text(f'description = "x"\n[unit]\nInaccessiblePaths = {_toml(value)}\n')
    with pytest.raises(profiles.ProfileError, match="InaccessiblePaths"):
        profiles.load([tmp_path])


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    assert isinstance(value, list)
    return "[" + ", ".join('"' + v.replace("\n", "\\n") + '"' for v in value) + "]"
