"""The layering of STYLE.md, checked on the import statements: imports point downward, and the CLI stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "supervisor"

LAYERS = {
    "errors": 0,
    "frozen": 0,  # record classes that are dataclasses to anyone who asks, and cost the CLI nothing to define
    "environment": 0,
    "quantities": 0,
    "protocol": 0,
    "fnprotocol": 0,
    "logformat": 0,
    "unitfile": 0,
    "waiting": 0,  # the CLI's blocking reads, interruptible by any signal
    "auth": 1,
    "policy": 1,
    "peercgroup": 1,
    "limits": 1,
    "limitforms": 0,
    "profiles": 1,
    "properties": 1,
    "jobspec": 1,
    "units": 1,
    "policyfile": 1,
    "audit": 1,
    "statedb": 1,
    "tokens": 2,
    "access": 2,
    "systemd": 2,
    "journal": 2,
    "records": 2,
    "peer": 2,
    "stdio": 2,
    "backends": 3,
    "ledger": 3,
    "reaper": 3,
    "launcher": 3,
    "functions": 3,
    "fnstore": 2,
    "fnunits": 1,
    "fninterface": 4,
    "jobs": 3,
    "queue": 3,
    "timers": 3,
    "retries": 1,
    "timerunits": 1,
    "interface": 4,
    "connection": 4,
    "server": 4,
    "daemon": 4,
    "client": 4,
    "fnclient": 4,  # client's io.sjob.Functions methods, for sjob fn only
    "pipewriter": 1,
    "remote": 4,  # sjob -H: the ssh transport of client
    "bridge": 4,  # sjob --bridge: the remote end of sjob -H
    "cli": 4,
    "manpages": 4,  # documentation made from the CLI's and sjobd's declarations: it reads both, neither reads it
}
# The unprivileged side may use only layer-0 modules.
EDGE_ONLY_LAYER0 = {"client", "fnclient", "cli", "remote", "bridge"}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "supervisor":
                found.update(alias.name for alias in node.names if not alias.name.startswith("__"))  # __version__
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


# Orchestration reaches systemd, journald and the job records only through the Protocols of `backends`, so host
# tests can put fakes behind them; sjobd's wiring (daemon) is what hands it the real adapters.
ORCHESTRATION = {"backends", "ledger", "reaper", "jobs", "queue", "timers"}
ADAPTERS = {"systemd", "journal", "records", "statedb"}


@pytest.mark.parametrize("name", sorted(ORCHESTRATION))
def test_orchestration_uses_no_adapter_directly(name: str) -> None:
    assert imports_of(PACKAGE / f"{name}.py") & ADAPTERS == set()


def loaded_by(code: str) -> set[str]:
    prog = f"import sys; {code}; print(repr(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True).stdout
    return set(ast.literal_eval(out.strip().splitlines()[-1]))


DAEMON_ONLY = {
    "asyncio",
    "dbus_fast",
    "systemd",
    "asyncvarlink",
    "supervisor.jobs",
    "supervisor.reaper",
    "supervisor.ledger",
    "supervisor.interface",
    "supervisor.connection",
    "supervisor.server",
    "sqlite3",
}


# What `sjob --help` may load: the verb table, the exit statuses and the environment, nothing a verb needs.
HELP_ONLY = {"argparse", "dataclasses", "typing", "json", "socket", "supervisor.protocol", "supervisor.client"}
HELP_ONLY |= {"re", "textwrap"}  # re alone is a quarter of sjob --help's start-up in the test VM


def test_sjob_help_loads_no_verb_and_no_parser() -> None:
    loaded = loaded_by("from supervisor.cli import execute; execute(['--help'])")
    assert loaded & (DAEMON_ONLY | HELP_ONLY | {"rich", "typer"}) == set()
    assert not {m for m in loaded if m.startswith("supervisor.cli.") and m.split(".")[2] in ("run", "list", "status")}


@pytest.mark.parametrize("verb", ["run", "logs", "status", "list", "top", "wait", "stop", "token", "completion"])
def test_a_verb_loads_only_itself_and_never_the_daemon(verb: str) -> None:
    code = "from supervisor.cli.commands import COMMANDS; from supervisor.cli.command import build_parser"
    loaded = loaded_by(f"{code}; build_parser(COMMANDS[{verb!r}].command())")  # what `sjob VERB` loads to parse
    assert loaded & (DAEMON_ONLY | {"rich", "typer", "typing"}) == set()  # typing alone costs ~2 ms natively
    assert loaded & {"dataclasses", "inspect"} == set()  # the record classes are `frozen`'s (about 15 ms natively)
    others = {"run", "logs", "status", "list", "top", "wait", "stop", "token", "completion"} - {verb}
    if verb != "completion":  # which reads every verb's declaration
        assert {m.removeprefix("supervisor.cli.") for m in loaded if m.startswith("supervisor.cli.")} & others == set()


def test_a_verb_runs_without_gettext_and_leaves_the_real_one_to_others() -> None:
    # `sjob list --bogus` parses (and fails) as usual, with argparse's own words, but neither gettext nor locale is
    # loaded for it; a later `import gettext` gets the real module, not the stand-in argparse was given.
    code = (
        "from supervisor.cli import execute; status = execute(['list', '--bogus']); "
        "loaded = sorted({'gettext', 'locale'} & set(sys.modules)); import gettext; "
        "print(status, loaded, hasattr(gettext, 'translation'), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", f"import sys; {code}"], capture_output=True, text=True, check=False)
    assert "unrecognized arguments: --bogus" in result.stderr
    assert result.stderr.splitlines()[-1] == "2 [] True"
