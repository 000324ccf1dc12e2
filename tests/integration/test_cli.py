"""Issue I on a real system: sjob as installed by install.sh, next to systemctl and man: its version, its exit
statuses, bash completion of the caller's job ids, `man sjob`, `sjob wait`, and `sjob list` piped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from .conftest import SJOB, User, run, sjob
from .test_skeleton import detach

# bash-completion loads a command's completion at its first TAB; load it now, by the loader bash-completion 2.12 and
# later (trixie) or 2.11 (bookworm) has.
LOAD = "{ _comp_load sjob || __load_completion sjob; } >/dev/null 2>&1"


def test_version() -> None:
    result = sjob("--version")
    installed = run("/opt/sjob/bin/python3", "-c", "import supervisor; print(supervisor.__version__)").stdout.decode()
    assert (result.returncode, result.stdout.decode()) == (0, f"sjob {installed.strip()}\n")


def test_help_lists_the_environment_and_the_exit_statuses() -> None:
    result = sjob("--help")
    assert result.returncode == 0
    for needle in (b"SJOB_SOCKET", b"SJOB_TOKEN", b"SJOB_TOKEN_FILE", b"NO_COLOR", b"exit status:", b"  69 "):
        assert needle in result.stdout


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["--frobnicate"], 2, b"sjob: unknown option '--frobnicate'"),
        (["stop", "--grace"], 2, b"sjob stop: argument --grace: expected one argument"),
        (["status", "not-an-id"], 2, b"sjob: invalid job id"),
        (["run", "--memory", "lots", "--", "true", "refused-by-sjob"], 2, b"sjob: --memory 'lots': not a size"),
        (["status", "ffffffff"], 66, b"sjob: no job with id 'ffffffff'"),
        (["list", "--all"], 77, b"only root and sjob admins"),
        (["run", "--", "no-such-command-xyz"], 127, b"sjob: command not found: no-such-command-xyz"),
    ],
)
@pytest.mark.serial("compares the set of all sjob units")
def test_exit_statuses(alice: User, args: list[str], status: int, words: bytes) -> None:
    since = time.time_ns() // 1000
    result = sjob(*args, user=alice)
    assert result.returncode == status, result.stderr
    assert words in result.stderr
    assert b"hint: " in result.stderr
    # Nothing was started: sjobd has no record of it (a record is written before any unit exists). Not all of the
    # machine's units before and after: the tests alongside start alice's jobs meanwhile.
    jobs = json.loads(sjob("list", "--json", user=alice).stdout)
    assert [j for j in jobs if j["created_usec"] >= since and j["argv"][-1] == args[-1]] == []


def test_sjobd_unreachable_is_69(alice: User) -> None:
    result = run("env", "SJOB_SOCKET=/run/sjob/nothing-here", SJOB, "list", user=alice)
    assert result.returncode == 69
    assert result.stderr.startswith(b"sjob: cannot connect to sjobd at /run/sjob/nothing-here")


def interactive_bash(user: User, script: str) -> subprocess.CompletedProcess[bytes]:
    """`bash -ic SCRIPT` as the user: their ~/.bashrc (Debian's skeleton) loads bash-completion."""
    return run("runuser", "-u", user.name, "--", "bash", "-ic", script, timeout=120)


def test_bash_completes_verbs_and_the_callers_job_ids(alice: User, bob: User) -> None:
    spec = interactive_bash(alice, f"{LOAD}; complete -p sjob")
    assert spec.returncode == 0, spec.stderr
    match = re.search(rb"complete -F (\S+) sjob$", spec.stdout.strip())
    assert match, spec.stdout
    function = match[1].decode()
    mine, theirs = detach("sleep", "60", user=alice), detach("sleep", "60", user=bob)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        script = (
            f"{LOAD}; COMP_WORDS=({line} ''); COMP_CWORD={len(words)}; COMP_LINE='{line} '; COMP_POINT=${{#COMP_LINE}};"
            f" {function} sjob '' {words[-1]}; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        result = interactive_bash(alice, script)
        assert result.returncode == 0, result.stderr
        return result.stdout.decode().split()

    ids = complete("sjob", "logs")
    assert mine in ids
    assert theirs not in ids  # another user's job is not the caller's to see
    assert mine in complete("sjob", "stop")
    assert {"run", "logs", "status", "list", "wait", "stop"} <= set(complete("sjob"))
    assert "TERM" in complete("sjob", "stop", "--signal")
    assert {"strict", "network"} <= set(complete("sjob", "run", "--profile"))
    sjob("stop", "--grace", "0", mine, user=alice)
    sjob("stop", "--grace", "0", theirs, user=bob)


def test_completions_are_installed_for_zsh_and_fish() -> None:
    for path, first in (
        ("/usr/local/share/zsh/site-functions/_sjob", "#compdef sjob"),
        ("/usr/local/share/fish/vendor_completions.d/sjob.fish", "# fish completion for sjob"),
    ):
        with open(path) as f:
            assert f.readline().startswith(first), path


def test_man_sjob() -> None:
    env = {**os.environ, "MANPAGER": "cat", "MANWIDTH": "120"}
    page = subprocess.run(["man", "sjob"], capture_output=True, env=env, check=False, timeout=120)
    assert page.returncode == 0, page.stderr
    text = page.stdout.decode()
    for needle in ("sjob - run commands as supervised systemd services", "EXIT STATUS", "SJOB_TOKEN_FILE"):
        assert needle in text
    assert re.search(r"\n\s+69\s+sjobd cannot be reached", text), text
    assert re.search(r"sjob wait \[--timeout DURATION\] \[--json\] ID\.\.\.", text)
    daemon = subprocess.run(["man", "8", "sjobd"], capture_output=True, env=env, check=False, timeout=120)
    assert daemon.returncode == 0, daemon.stderr
    assert "--check-policy" in daemon.stdout.decode()


def test_wait_exits_with_the_last_jobs_status(alice: User) -> None:
    # Statuses no other test's jobs of alice's end with: some find their job in her list by its command.
    first = detach("sh", "-c", "sleep 1; exit 6", user=alice)
    second = detach("sh", "-c", "exit 7", user=alice)
    result = sjob("wait", first, second, user=alice)
    assert result.returncode == 7, result.stderr
    ended = json.loads(sjob("wait", "--json", second, first, user=alice).stdout)
    assert [(j["id"], j["state"], j["exit_status"]) for j in ended] == [(second, "failed", 7), (first, "failed", 6)]
    killed = detach("sh", "-c", "kill -KILL $$", user=alice)
    assert sjob("wait", killed, user=alice).returncode == 128 + 9
    slow = detach("sleep", "60", user=alice)
    late = sjob("wait", "--timeout", "1s", slow, user=alice)
    assert (late.returncode, late.stderr) == (124, f"sjob: job {slow} has not ended within 1s\n".encode())
    sjob("stop", "--grace", "0", slow, user=alice)


@pytest.mark.serial("lists alice's newest jobs, which other tests start too")
def test_piped_list_is_one_line_per_job_at_full_width(alice: User) -> None:
    long_argument = "x" * 400
    ids = [detach("sh", "-c", "exit 0", long_argument, "two\nlines", user=alice), detach("true", user=alice)]
    for job_id in ids:
        sjob("wait", job_id, user=alice)
    listed = sjob("list", user=alice)  # captured: a pipe, not a terminal
    assert listed.returncode == 0
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "STATE", "AGE", "OWNER", "COMMAND"]
    assert all(re.match(r"[0-9a-f]{8}  ", line) for line in lines[1:]), "a job took more than one line"
    (first,) = [line for line in lines if line.startswith(ids[0])]
    assert first.endswith(f"{long_argument} 'two\\nlines'")
    assert "\x1b" not in listed.stdout.decode()
    assert sjob("list", "-q", "-n", "2", user=alice).stdout.decode().split() == ids[::-1]
