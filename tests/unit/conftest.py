"""Fixtures the CLI tests share."""

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from .serverthread import ServerThread

# No time limit per example: tests/run runs these while the test VMs boot beside them, and an example that waited
# for a CPU is not a failure. What an example does is what is checked.
settings.register_profile("sjob", deadline=None)
settings.load_profile("sjob")

# A test run started with SIGINT ignored (`tests/run &` from a script: a shell without job control ignores SIGINT in
# what it puts in the background) would pass SIG_IGN on to every child, and the Ctrl-C tests would fail for no
# fault of sjob's. A handler of our own is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """A real sjob server on a temporary socket, with fakes of systemd and journald behind it."""
    path = Path(tempfile.mkdtemp(prefix="sjob-cli-"))
    srv = ServerThread(path)
    yield srv
    srv.stop()
    shutil.rmtree(path)
