"""The shim end to end, against a fake journald socket: exact output, separate streams, exit status."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import logformat
from supervisor.logformat import EofRecord, OutputRecord

from .journalfake import FakeJournal

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[FakeJournal]:
    fake = FakeJournal(tmp_path)
    yield fake
    fake.close()


def run_shim(journal: FakeJournal, *argv: str) -> tuple[int, dict[str, bytes]]:
    """Run the shim as sjobd would (python -I -S), pointed at the fake journal; return status and streams."""
    code = (
        f"import sys; sys.path.append({SRC!r}); import supervisor.shim as s; s.JOURNAL_SOCKET = {journal.path!r}; "
        "sys.exit(s.main(sys.argv))"
    )
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, "1a2b3c4d", "--", *argv], timeout=60, check=False)
    journal.wait_for(logformat.F_EVENT, b"eof")
    streams = {"stdout": b"", "stderr": b""}
    seqs = []
    for fields in journal.entries:
        record = logformat.parse_record(fields)
        if isinstance(record, OutputRecord):
            streams[record.stream] += record.data
            seqs.append(record.seq)
        elif isinstance(record, EofRecord):
            assert record.records == len(seqs)
    assert seqs == list(range(1, len(seqs) + 1))
    return proc.returncode, streams


TRICKY = b"\n\nblank lines above\ntrailing blanks   \ncrlf\r\n<3>level prefix\n\x00nul\xff\xfeinvalid utf-8\nno newline"


def test_output_is_exact_and_streams_are_apart(journal: FakeJournal, tmp_path: Path) -> None:
    (tmp_path / "out").write_bytes(TRICKY)
    (tmp_path / "err").write_bytes(b"to stderr\n")
    status, streams = run_shim(journal, "/bin/sh", "-c", f"cat {tmp_path}/out; cat {tmp_path}/err >&2; exit 3")
    assert status == 3
    assert streams == {"stdout": TRICKY, "stderr": b"to stderr\n"}


def test_large_single_line(journal: FakeJournal) -> None:
    status, streams = run_shim(journal, sys.executable, "-c", "import sys; sys.stdout.write('x' * (1 << 20))")
    assert status == 0
    assert streams["stdout"] == b"x" * (1 << 20)
    assert all(len(e.get("MESSAGE", b"")) <= 64 * 1024 for e in journal.entries)


def test_missing_command(journal: FakeJournal) -> None:
    status, streams = run_shim(journal, "/nonexistent/command")
    assert status == 127
    assert b"cannot execute '/nonexistent/command'" in streams["stderr"]


def test_sigpipe_is_default_again_for_the_job(journal: FakeJournal) -> None:
    # With SIGPIPE ignored (Python's default), `yes` would complain about a broken pipe on stderr.
    status, streams = run_shim(journal, "/bin/sh", "-c", "yes | head -c 4")
    assert (status, streams) == (0, {"stdout": b"y\ny\n", "stderr": b""})


def test_forwarder_is_not_a_child_of_the_job(journal: FakeJournal) -> None:
    code = (
        "import os\ntry:\n    os.wait()\n    print('has a child')\nexcept ChildProcessError:\n    print('no children')"
    )
    status, streams = run_shim(journal, sys.executable, "-c", code)
    assert (status, streams["stdout"]) == (0, b"no children\n")
