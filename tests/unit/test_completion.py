"""Shell completion, generated from the verbs' declarations, asked as each shell asks it at TAB: verbs, options, the
caller's job ids (from a real server), profile and signal names, and the command line of `sjob run`."""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.cli import completion
from supervisor.cli.commands import COMMANDS
from supervisor.fnclient import FunctionClient
from supervisor.fnprotocol import FunctionSettings
from supervisor.policy import Action

from .serverthread import ServerThread

ROOT = Path(__file__).resolve().parents[2]

BASH = """\
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_sjob
printf '%s\\n' "${COMPREPLY[@]}"
"""
ZSH = Path(__file__).with_name("capture_completion.zsh")


@pytest.fixture(scope="module")
def jobs() -> Iterator[tuple[dict[str, str], str, str, str]]:
    """An environment in which `sjob` is this checkout's, talking to a server that has a running and an ended job and a
    function (whose build was a job too)."""
    directory = Path(tempfile.mkdtemp(prefix="sjob-completion-"))
    server = ServerThread(directory)
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "sjob"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -c "from supervisor.cli import main; main()" "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "SJOB_SOCKET": server.socket,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(directory),
    }

    def start(*argv: str) -> str:
        out = subprocess.run(["sjob", "run", "-d", "-q", "--", *argv], env=env, capture_output=True, check=True)
        return out.stdout.decode().strip()

    running, ended = start("sleep", "60"), start("true")
    policy = server.access.policy  # this test runs as root, whom the shipped policy does not let deploy
    everyone = dataclasses.replace(policy.rules[-1], actions=policy.rules[-1].actions | {Action.deploy})
    server.access.policy = dataclasses.replace(policy, rules=(everyone,))
    with FunctionClient(server.socket) as client:
        built = client.deploy("greet", "print('hi')\n", None, FunctionSettings()).version.build_job
    subprocess.run(["sjob", "wait", ended], env=env, check=True)
    yield env, running, ended, built
    subprocess.run(["sjob", "stop", "--grace", "0", running], env=env, check=False, capture_output=True)
    server.stop()
    shutil.rmtree(directory)


def generated(shell: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(completion, "PROFILE_DIRECTORIES", (str(ROOT / "policy" / "profiles"),))
    path = directory / ("_sjob" if shell == "zsh" else f"sjob.{shell}")
    path.write_text(completion.script(shell))
    return path


def offered(shell: str, script: Path, line: str, env: dict[str, str]) -> set[str]:
    if shell == "bash":
        words = line.split(" ")
        argv = ["bash", "--norc", "--noprofile", "-c", BASH, "bash", str(script), *words]
    elif shell == "zsh":
        argv = ["zsh", "-f", str(ZSH), str(script.parent), line]
    else:
        argv = ["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "rror" not in out.stderr, out.stderr
    if shell == "zsh":
        return {part.split("</M>")[0] for part in out.stdout.split("<M>")[1:]}
    return {entry.split("\t")[0] for entry in out.stdout.splitlines() if entry}


VERBS = set(COMMANDS)
SHELLS = [
    pytest.param(s, marks=pytest.mark.skipif(shutil.which(s) is None, reason=f"needs {s}")) for s in completion.SHELLS
]


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_offers_what_the_declarations_and_sjobd_say(
    shell: str, jobs: tuple[dict[str, str], str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, running, ended, built = jobs  # built: the function's build, a job of its deployer's
    script = generated(shell, tmp_path, monkeypatch)
    help_flags = {"-h", "--help"} if shell != "bash" else set()  # bash offers them too, but only for `-`+TAB below

    def check(line: str, wanted: set[str]) -> None:
        assert offered(shell, script, line, env) == wanted, line

    check("sjob ", VERBS)
    check("sjob st", {"status", "stop"})
    check("sjob stop -", {"-s", "--signal", "--grace", "--no-wait", "--json", "-h", "--help"})
    check("sjob stop --signal TE", {"TERM"})
    check("sjob logs ", {running, ended, built})
    check("sjob stop ", {running})  # only jobs that can still be stopped
    check(f"sjob wait {running} ", {running})
    assert not offered(shell, script, "sjob status 1a2b3c4d ", env) & {running, ended, built}  # one ID is all it takes
    check("sjob run --profile ", {path.stem for path in (ROOT / "policy" / "profiles").glob("*.toml")})
    check("sjob token ", {"issue", "list", "revoke"})
    check("sjob fn call ", {"greet"})
    check("sjob fn rm --force ", {"greet"})
    check("sjob token issue --", {"--subject", "--scope", "--ttl", "--output", "--json", "--help"})
    check("sjob completion ", {"bash", "zsh", "fish"})
    check("sjob list -n ", set())
    assert "echo" in offered(shell, script, "sjob run ech", env)
    assert "echo" in offered(shell, script, "sjob run -d --memory 1G -- ech", env)
    assert not {o for o in offered(shell, script, "sjob run sleep -", env) if o.startswith("--detach")}
    assert help_flags <= offered(shell, script, "sjob list -", env)
    # `-n` takes a value in `list` but not in `run` (no stdin), so what follows it in `run` is the command.
    assert "echo" in offered(shell, script, "sjob run -n ech", env)
    assert not {o for o in offered(shell, script, "sjob run -n sleep -", env) if o.startswith("--detach")}


@pytest.mark.parametrize("shell", SHELLS)
def test_with_a_host_the_ids_come_from_that_host(
    shell: str, jobs: tuple[dict[str, str], str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sjob -H HOST stop <TAB>` offers HOST's jobs, not this machine's: the completion asks through ssh (a fake
    here, which logs what it was asked and reaches nothing)."""
    env, _, _, _ = jobs
    script = generated(shell, tmp_path, monkeypatch)
    ssh, log = tmp_path / "ssh", tmp_path / "ssh.log"
    ssh.write_text(f'#!/bin/sh\necho "$@" >>{log}\nexit 255\n')
    ssh.chmod(0o755)
    env = {**env, "SJOB_SSH": str(ssh)}
    for line in ("sjob -H elsewhere stop ", "sjob --host=elsewhere logs ", "sjob -H elsewhere fn call "):
        assert offered(shell, script, line, env) == set(), line
    assert log.read_text().count("elsewhere sjob --bridge") == 3, log.read_text()


def test_every_option_of_every_verb_is_in_every_script() -> None:
    scripts = {shell: completion.script(shell) for shell in completion.SHELLS}
    for node in completion.tree():
        for option in node.options:
            for flag in option.flags:
                for shell, text in scripts.items():
                    name = flag if shell != "fish" else f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
                    assert name in text, (shell, flag)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
def test_the_bash_script_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "-s", "bash", "-"], input=completion.script("bash"), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_what_sjobd_or_another_host_prints_is_never_run(
    shell: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of I: bash's `compgen -W "$(sjob -H HOST list -q)"` expanded $(...) in what HOST printed, so a hostile
    host ran code in the shell of whoever pressed TAB. The ids and names offered are taken as text, plain ones only."""
    script = generated(shell, tmp_path, monkeypatch)
    mark = tmp_path / "ran"
    fake = tmp_path / "bin" / "sjob"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' '$(touch {mark})' '`touch {mark}`' 'abc12345' 'a b'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    for line in ("sjob stop ", "sjob -H box logs ", "sjob fn call "):
        assert offered(shell, script, line, env) <= {"abc12345"}, line
    assert "abc12345" in offered(shell, script, "sjob stop ", env)
    assert not mark.exists()
