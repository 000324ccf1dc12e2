"""src/sigbus/sjob-sigbus.c, sjobd's SIGBUS handler: a mapping of a file truncated under it reads as zeros instead of
killing the process (bookworm's journald truncates journal files as it archives them); a SIGBUS sent with kill
still kills. Each case runs in a child process, which is what dies if the handler does not work."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "sigbus" / "sjob-sigbus.c"

TRUNCATED = """
import ctypes, mmap, os, sys
lib = ctypes.CDLL(sys.argv[1])
if sys.argv[2] == "install":
    assert lib.sjob_sigbus_install() == 0
    assert lib.sjob_sigbus_install() == 0  # a second install changes nothing
os.makedirs(os.path.dirname(sys.argv[3]), exist_ok=True)
fd = os.open(sys.argv[3], os.O_RDWR | os.O_CREAT | os.O_TRUNC)
os.write(fd, b"x" * 3 * mmap.PAGESIZE)
m = mmap.mmap(fd, 3 * mmap.PAGESIZE, prot=mmap.PROT_READ)
os.ftruncate(fd, mmap.PAGESIZE)  # what journald does to a file a reader has mapped
print(m[:2], m[mmap.PAGESIZE + 5 : mmap.PAGESIZE + 7], m[-2:], lib.sjob_sigbus_replaced())
"""

KILLED = """
import ctypes, os, signal, sys
assert ctypes.CDLL(sys.argv[1]).sjob_sigbus_install() == 0
os.kill(os.getpid(), signal.SIGBUS)
print("survived")
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    built = tmp_path_factory.mktemp("sigbus") / "sjob_sigbus.so"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", built, SOURCE], check=True)
    return built


def child(code: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("name", ["journal/system.journal", "journal/user-1000@0123-4567.journal~"])
def test_a_truncated_journal_file_reads_as_zeros(library: Path, tmp_path: Path, name: str) -> None:
    result = child(TRUNCATED, str(library), "install", str(tmp_path / name))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"b'xx' b'\\x00\\x00' b'\\x00\\x00' 2\n"


def test_without_it_the_same_read_kills(library: Path, tmp_path: Path) -> None:
    """The case above is real: the same read without the handler dies of SIGBUS."""
    assert child(TRUNCATED, str(library), "no", str(tmp_path / "journal/system.journal")).returncode == -signal.SIGBUS


@pytest.mark.parametrize("name", ["journal/system.bin", "data/system.journal", "system.journal"])
def test_any_other_truncated_file_still_kills(library: Path, tmp_path: Path, name: str) -> None:
    """Review: zeros in place of any other mapping would hide a real bug behind wrong data."""
    assert child(TRUNCATED, str(library), "install", str(tmp_path / name)).returncode == -signal.SIGBUS


def test_a_sigbus_sent_with_kill_still_kills(library: Path) -> None:
    result = child(KILLED, str(library))
    assert result.returncode == -signal.SIGBUS
    assert b"survived" not in result.stdout
