"""The layering of STYLE.md, checked on the import statements: imports point downward, and the CLI stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "supervisor"

LAYERS = {
    "errors": 0,
    "protocol": 0,
    "logformat": 0,
    "auth": 1,
    "policy": 1,
    "properties": 1,
    "jobspec": 1,
    "units": 1,
    "systemd": 2,
    "journal": 2,
    "records": 2,
    "shim": 2,
    "jobs": 3,
    "server": 4,
    "daemon": 4,
    "client": 4,
    "cli": 4,
}
EDGE_ONLY_LAYER0 = {"client", "cli"}  # the unprivileged side may use only layer-0 modules


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "supervisor":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("supervisor."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("supervisor."))
    return found


def module_files() -> list[tuple[str, Path]]:
    files = [(p.stem, p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    files += [("cli", p) for p in (PACKAGE / "cli").glob("*.py")]
    return files


@pytest.mark.parametrize(("name", "path"), module_files(), ids=str)
def test_imports_point_downward(name: str, path: Path) -> None:
    assert name in LAYERS, f"{name} has no layer; add it to LAYERS"
    for imported in imports_of(path) - {name}:
        assert imported in LAYERS, f"{path.name} imports unknown module {imported}"
        if name in EDGE_ONLY_LAYER0:
            assert LAYERS[imported] == 0 or imported in EDGE_ONLY_LAYER0, f"{path.name} imports {imported}"
        else:
            # Same-layer imports are fine (daemon wires server); upward ones are not.
            assert LAYERS[imported] <= LAYERS[name], f"{path.name} (layer {LAYERS[name]}) imports {imported}"


def test_the_cli_does_not_load_daemon_libraries() -> None:
    code = (
        "import sys; from supervisor.cli import app; from supervisor.cli import run, status, list;"
        "heavy = {'asyncio', 'dbus_fast', 'systemd', 'asyncvarlink', 'supervisor.jobs', 'supervisor.server', 'rich'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_shim_needs_only_the_stdlib() -> None:
    code = (
        f"import sys; sys.argv = ['shim']; sys.path.append({str(PACKAGE.parent)!r}); import supervisor.shim;"
        "print(sorted(m for m in sys.modules if m.startswith('supervisor')))"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['supervisor', 'supervisor.logformat', 'supervisor.shim']"
