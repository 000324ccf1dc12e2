"""Packaging facts that would otherwise drift apart silently."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_vm_wheelhouse_has_what_pyproject_requires() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    guest_tools = ("pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "pexpect", "hatchling")
    wanted = project["dependencies"] + [
        r for r in project["optional-dependencies"]["dev"] if r.split("==")[0] in guest_tools
    ]
    lines = (ROOT / "tests" / "vm" / "requirements.txt").read_text().splitlines()
    listed = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert set(wanted) <= listed, f"add to tests/vm/requirements.txt: {sorted(set(wanted) - listed)}"


def test_the_vm_wheelhouse_has_the_functions_runtime() -> None:
    """install.sh builds the functions runtime from the wheelhouse in the VM, which has no network."""
    runtime = (ROOT / "runtime" / "requirements.txt").read_text().splitlines()
    wanted = {line.strip() for line in runtime if line.strip() and not line.startswith("#")}
    lines = (ROOT / "tests" / "vm" / "requirements.txt").read_text().splitlines()
    listed = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert wanted <= listed, f"add to tests/vm/requirements.txt: {sorted(wanted - listed)}"


def test_build_backend_is_pinned_like_the_dev_tools() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["build-system"]["requires"] == ["hatchling>=1.18"]
    assert "hatchling==1.33.0" in pyproject["project"]["optional-dependencies"]["dev"]
