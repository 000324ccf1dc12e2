"""Issue E.3 on real systemd: a job must not reach sjobd, nor carry its owner's powers. Each test is an attack
that worked before: a job asking sjobd for more (from the strict profile, and from a site profile that does not
hide the socket, so sjobd's own refusal is what stops it), an admin's job listing everyone's jobs, a token's job
starting jobs under the local users' rule, one token subject reading another's jobs through their shared run_as
user, a token rule mapped to a system or privileged user, and a uid that has no passwd entry."""

# ruff: noqa: F811 (fixtures imported from test_access)

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SJOB, User, change_users, ensure_user, run, sjob
from .test_access import POLICY, admin, ci_user, policy_edit, reload_sjobd, token_dir  # noqa: F401 (fixtures)
from .test_skeleton import status

SJOBD = "/opt/sjob/bin/sjobd"
SITE_PROFILES = Path("/etc/sjob/profiles")
REFUSED = b"requests from inside an sjob job are refused"
# A site profile that hides nothing from /run: what stops its jobs is sjobd itself (the cgroup check).
LEAKY = """description = "test: no path hidden, so sjobd's own refusal is what a job meets"
[unit]
NoNewPrivileges = true
PrivateTmp = true
"""
SJOBD_SOCKET = "/run/sjob/io.sjob.Jobs"
SYSTEM_BUS = "/run/dbus/system_bus_socket"


def connect(path: str) -> list[str]:
    """A probe: exits 0 if a Unix socket at `path` accepts a connection."""
    return ["python3", "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"]


@pytest.fixture
def leaky_profile(policy_edit: Any) -> Iterator[None]:
    SITE_PROFILES.mkdir(parents=True, exist_ok=True)
    (SITE_PROFILES / "leaky.toml").write_text(LEAKY)
    policy_edit(
        POLICY.read_text().replace('allowed = ["strict", "network"]', 'allowed = ["strict", "network", "leaky"]')
    )
    yield
    (SITE_PROFILES / "leaky.toml").unlink()


def inside(*argv: str, user: User, profile: str = "strict", cwd: str | None = None, **kw: Any) -> Any:
    return run(SJOB, "run", "--profile", profile, "--", *argv, user=user, cwd=cwd, **kw)


def test_a_strict_job_cannot_even_see_sjobd_or_the_buses(alice: User) -> None:
    # What is hidden is there: from outside a job each probe succeeds.
    assert run(*connect(SJOBD_SOCKET), user=alice).returncode == 0
    assert run(*connect(SYSTEM_BUS), user=alice).returncode == 0
    assert run("ls", "/run/user", user=alice).returncode == 0
    for probe in ([SJOB, "list"], connect(SJOBD_SOCKET), connect(SYSTEM_BUS), ["ls", "/run/user"]):
        for profile in ("strict", "network"):
            result = inside(*probe, user=alice, profile=profile)
            assert result.returncode != 0, (probe, profile, result.stdout, result.stderr)


@pytest.mark.serial("edits policy.toml and reloads sjobd")
@pytest.mark.usefixtures("leaky_profile")
def test_sjobd_refuses_a_job_that_can_reach_its_socket(alice: User) -> None:
    reached = inside(*connect(SJOBD_SOCKET), user=alice, profile="leaky")
    assert reached.returncode == 0, reached.stderr  # the socket is there: only sjobd stands in the way
    for request in ([SJOB, "list"], [SJOB, "run", "--profile", "network", "--", "true"]):
        result = inside(*request, user=alice, profile="leaky")
        assert result.returncode != 0
        assert REFUSED in result.stderr, result.stderr
    refusals = run("journalctl", "-q", "-o", "json", "SJOB_AUDIT=1", "SJOB_ACTION=connect", "SJOB_DECISION=denied")
    reasons = [json.loads(line).get("SJOB_REASON") for line in refusals.stdout.decode().splitlines()]
    assert REFUSED.decode() in reasons


@pytest.mark.serial("edits policy.toml and reloads sjobd")
@pytest.mark.usefixtures("leaky_profile")
def test_an_admins_job_has_no_admin_powers(admin: User) -> None:
    assert sjob("list", "--all", user=admin).returncode == 0  # the admin may, from outside a job
    for profile in ("strict", "leaky"):
        result = inside(SJOB, "list", "--all", user=admin, profile=profile)
        assert result.returncode != 0, (profile, result.stdout)
    assert REFUSED in inside(SJOB, "list", "--all", user=admin, profile="leaky").stderr


def issue(directory: Path, subject: str, scope: str = "run,status,logs,list") -> Path:
    path = directory / f"{subject}-{time.monotonic_ns()}.token"
    result = sjob("token", "issue", "--subject", subject, "--scope", scope, "--ttl", "1h", "--output", str(path))
    assert result.returncode == 0, result.stderr
    path.chmod(0o644)
    return path


def as_token(token: Path, *args: str, user: User) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SJOB_TOKEN_FILE": str(token)}
    return run(SJOB, *args, user=user, cwd=str(token.parent), env=env)


def token_rule(subjects: list[str], run_as: str, extra: str = "") -> str:
    return f'\n[[rules]]\nname = "ci"\ntokens = {json.dumps(subjects)}\nrun_as = "{run_as}"\n{extra}'


@pytest.mark.serial("edits policy.toml and reloads sjobd")
def test_a_token_job_cannot_start_jobs(
    alice: User,
    ci_user: User,
    token_dir: Path,
    leaky_profile: None,
) -> None:
    POLICY.write_text(POLICY.read_text() + token_rule(["ci-runner"], ci_user.name))
    reload_sjobd()
    token = issue(token_dir, "ci-runner")
    for profile in ("strict", "leaky"):
        result = as_token(token, "run", "--profile", profile, "--", SJOB, "run", "--", "true", user=alice)
        assert result.returncode != 0, (profile, result.stdout, result.stderr)
    leaky = as_token(token, "run", "--profile", "leaky", "--", SJOB, "list", user=alice)
    assert REFUSED in leaky.stderr, leaky.stderr


@pytest.mark.serial("edits policy.toml and reloads sjobd")
def test_token_subjects_sharing_a_run_as_user_do_not_see_each_others_jobs(
    alice: User,
    ci_user: User,
    token_dir: Path,
    policy_edit: Any,
) -> None:
    policy_edit(POLICY.read_text() + token_rule(["ci-a", "ci-b"], ci_user.name))
    a, b = issue(token_dir, "ci-a"), issue(token_dir, "ci-b")
    started = as_token(a, "run", "-d", "--", "sleep", "60", user=alice)
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.decode().strip()
    try:
        assert as_token(a, "status", job_id, user=alice).returncode == 0
        assert job_id in as_token(a, "list", user=alice).stdout.decode()
        assert job_id not in as_token(b, "list", user=alice).stdout.decode()
        theirs, missing = as_token(b, "status", job_id, user=alice), as_token(b, "status", "0123abcd", user=alice)
        assert theirs.returncode == missing.returncode != 0
        assert theirs.stderr.replace(job_id.encode(), b"ID") == missing.stderr.replace(b"0123abcd", b"ID")
        assert status(job_id, ci_user)["state"] == "running"  # the run_as user sees the jobs run as them
    finally:
        sjob("stop", "--grace", "0", job_id)


def check_policy() -> subprocess.CompletedProcess[bytes]:
    return run(SJOBD, "--check-policy")


@pytest.fixture
def privileged_user() -> Iterator[User]:
    user = ensure_user("sjobtest-priv")
    yield user
    change_users("gpasswd", "-d", user.name, "adm")


@pytest.mark.serial("edits policy.toml and puts a user in the adm group")
@pytest.mark.usefixtures("policy_edit")
def test_a_token_rule_mapped_to_a_system_or_privileged_user_is_refused_at_load(privileged_user: User) -> None:
    original = POLICY.read_text()
    POLICY.write_text(original + token_rule(["ci-runner"], "daemon"))
    result = check_policy()
    assert result.returncode != 0
    assert b"/etc/sjob/policy.toml: [rules 'ci'] run_as = 'daemon'" in result.stderr, result.stderr
    assert b"is a system user" in result.stderr

    change_users("usermod", "-aG", "adm", privileged_user.name).check_returncode()
    POLICY.write_text(original + token_rule(["ci-runner"], privileged_user.name))
    result = check_policy()
    assert result.returncode != 0
    assert b"privileged group adm" in result.stderr, result.stderr
    POLICY.write_text(original + token_rule(["ci-runner"], privileged_user.name, "allow_privileged_run_as = true\n"))
    assert check_policy().returncode == 0  # the rule says so explicitly


@pytest.mark.serial("edits policy.toml, reloads sjobd and puts a user in the adm group")
def test_a_run_as_user_who_joins_a_privileged_group_after_load_is_refused(
    alice: User,
    privileged_user: User,
    token_dir: Path,
    policy_edit: Any,
) -> None:
    policy_edit(POLICY.read_text() + token_rule(["ci-runner"], privileged_user.name))
    token = issue(token_dir, "ci-runner")
    assert as_token(token, "run", "--", "true", user=alice).returncode == 0
    change_users("usermod", "-aG", "adm", privileged_user.name).check_returncode()
    refused = as_token(token, "run", "--", "true", user=alice)
    assert refused.returncode != 0
    assert re.search(rb"token refused: .*privileged group adm", refused.stderr), refused.stderr


def test_a_uid_without_passwd_entry_is_refused() -> None:
    result = run("setpriv", "--reuid", "4000000", "--regid", "4000000", "--clear-groups", SJOB, "list")
    assert result.returncode != 0, result.stdout
    assert b"uid 4000000 has no passwd entry" in result.stderr, result.stderr
