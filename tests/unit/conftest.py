"""Fixtures the CLI tests share."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .serverthread import ServerThread


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """A real sjob server on a temporary socket, with fakes of systemd and journald behind it."""
    path = Path(tempfile.mkdtemp(prefix="sjob-cli-"))
    srv = ServerThread(path)
    yield srv
    srv.stop()
    shutil.rmtree(path)
