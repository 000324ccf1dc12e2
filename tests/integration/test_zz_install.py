"""install.sh: running it again is harmless, --uninstall removes what it added, and installing again restores it.

Named to run last: it uninstalls sjob for a while. It ends with sjob installed again, as it found it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import SJOB, run, sjob, sjob_units

# Each install may take minutes: they run while the next suite's VM boots beside them (or, on a fresh machine, while
# its image is built). An install from nothing builds the functions runtime (Python with pandas) again: 165 s on
# trixie in CI, over 300 s on bookworm with the trixie VM busy beside it (pytest-timeout's default cut it off).
pytestmark = [pytest.mark.last("uninstalls and installs sjob; no timing in it"), pytest.mark.timeout(900)]

SRC = Path(__file__).resolve().parents[2]
INSTALLED = [
    Path("/opt/sjob/bin/sjobd"),
    Path("/opt/sjob/bin/sjob-shim"),
    Path(SJOB),
    Path("/usr/local/lib/systemd/system/sjobd.socket"),
    Path("/usr/local/lib/systemd/system/sjobd.service"),
    Path("/usr/local/lib/systemd/system/sjob.slice"),
    Path("/etc/sjob/policy.toml"),
    Path("/usr/local/share/man/man1/sjob.1"),
    Path("/usr/local/share/man/man8/sjobd.8"),
    Path("/usr/local/share/bash-completion/completions/sjob"),
    Path("/usr/local/share/zsh/site-functions/_sjob"),
    Path("/usr/local/share/fish/vendor_completions.d/sjob.fish"),
]


def install(*args: str) -> None:
    wheelhouse = os.environ.get("SJOB_WHEELHOUSE")
    extra = ["--wheelhouse", wheelhouse] if wheelhouse else []
    result = run(str(SRC / "install.sh"), *extra, *args, timeout=900)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_install_again_keeps_jobs_and_config() -> None:
    policy = Path("/etc/sjob/policy.toml")
    edited = policy.read_text() + "\n# edited by the admin\n"
    policy.write_text(edited)
    # Runs until stopped: an install beside the next suite's VM took 138 s once, longer than a `sleep 120`.
    running = sjob("run", "-d", "--", "sleep", "infinity").stdout.decode().strip()
    try:
        install()
        assert policy.read_text() == edited, "install.sh overwrote an edited policy"
        assert f"sjob-{running}.service" in sjob_units()
        assert run("systemctl", "is-active", f"sjob-{running}.service").stdout.strip() == b"active"
        assert sjob("status", running).returncode == 0
        assert sjob("run", "--", "echo", "still works").stdout == b"still works\n"
    finally:
        run("systemctl", "stop", f"sjob-{running}.service")


def test_uninstall_removes_everything_and_install_restores_it() -> None:
    install("--uninstall")
    for path in INSTALLED:
        assert not path.exists(), f"{path} is left behind"
    for directory in ("/opt/sjob", "/etc/sjob", "/var/lib/sjob"):
        assert not Path(directory).exists(), f"{directory} is left behind"
    assert not Path("/run/sjob/io.sjob.Jobs").exists()
    assert run("systemctl", "is-enabled", "sjobd.socket").returncode != 0
    install()
    for path in INSTALLED:
        assert path.exists(), f"{path} was not installed"
    assert run("systemctl", "is-active", "sjobd.socket").stdout.strip() == b"active"
    assert sjob("run", "--", "echo", "back").stdout == b"back\n"
