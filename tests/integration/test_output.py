"""Issue B, output: exact bytes per stream through journald, for anything a job can write, fast writers and
journal rotation included; followers; what journalctl shows."""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import SJOB, run, sjob
from .test_skeleton import detach, wait_finished

WRITER = Path(__file__).with_name("writer.py")  # writes given bytes to given streams in given chunks

CASES = {
    "blank lines": b"\n\n\nafter blanks\n\n",
    "trailing spaces": b"trailing   \n  \t \n",
    "crlf": b"dos\r\nlines\r\n\r\n",
    "level prefixes": b"".join(b"<%d>prefixed\n" % n for n in range(8)),
    "nul bytes": b"a\x00b\x00\x00c\n\x00",
    "invalid utf-8": b"\xff\xfe\xc3\x28\xa0\xa1\n\xed\xa0\x80\n",
    "no final newline": b"first\nsecond without",
    "one line of 1 MiB": b"x" * (1 << 20),
    "random binary": os.urandom(300_000),
}


def write_job(stdout: bytes, stderr: bytes, directory: Path) -> str:
    (directory / "out").write_bytes(stdout)
    (directory / "err").write_bytes(stderr)
    directory.chmod(0o755)
    return detach("/bin/sh", "-c", f"cat {directory}/out; cat {directory}/err >&2")


@pytest.mark.parametrize("name", list(CASES))
def test_logs_are_exact_per_stream(name: str, shared_dir: Path) -> None:
    data = CASES[name]
    job_id = write_job(data, data[::-1], shared_dir)
    wait_finished(job_id)
    result = sjob("logs", job_id)
    assert result.stdout == data
    assert result.stderr == data[::-1]
    assert sjob("logs", "--stdout", job_id).stdout == data
    assert sjob("logs", "--stderr", job_id).stderr == data[::-1]


def test_attached_run_is_exact_too() -> None:
    result = sjob("run", "--", "sh", "-c", "printf '\\0x\\r\\n\\n<1>y\\377'; printf 'e\\n\\n' >&2")
    assert (result.stdout, result.stderr) == (b"\0x\r\n\n<1>y\xff", b"e\n\n")


def sha256_of(argv: list[str]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE, cwd="/") as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    assert proc.returncode == 0
    return digest.hexdigest(), size


def test_fast_writer_loses_nothing() -> None:
    job_id = detach("sh", "-c", "yes | head -c 50M")
    wait_finished(job_id)
    expected = hashlib.sha256(b"y\n" * (25 * 1024 * 1024)).hexdigest()
    assert sha256_of([SJOB, "logs", "--stdout", job_id]) == (expected, 50 * 1024 * 1024)


@pytest.mark.timing(
    "counts journal entries, which depend on how fast the forwarder reads: a busy machine merges writes"
)
def test_many_small_writes_beat_the_rate_limit() -> None:
    # journald's default rate limit is 10000 messages per 30 s per unit; sjob units switch it off.
    job_id = detach("python3", str(WRITER), "--lines", "20000")
    wait_finished(job_id)
    expected = b"".join(b"line %d\n" % i for i in range(20000))
    out = sjob("logs", "--stdout", job_id).stdout
    assert out == expected
    count = run("journalctl", "-u", f"sjob-{job_id}.service", "-o", "cat", "SJOB_STREAM=stdout").stdout.count(b"\n")
    assert count > 10000  # the writes did arrive as separate entries, so the limit was really in play


def test_several_followers_see_every_byte() -> None:
    job_id = detach("python3", str(WRITER), "--lines", "3000", "--pause", "0.001")
    results: list[bytes] = []

    def follow() -> None:
        results.append(sjob("logs", "-f", "--stdout", job_id).stdout)

    threads = [threading.Thread(target=follow) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(300)
    expected = b"".join(b"line %d\n" % i for i in range(3000))
    assert results == [expected] * 4


@pytest.mark.serial("rotates the journal")
def test_reading_survives_journal_rotation() -> None:
    # sjobd died of SIGBUS here on bookworm: journald truncated a file as it archived it, under sjobd's reader.
    sjobd = ("systemctl", "show", "-p", "MainPID,NRestarts", "sjobd.service")
    before = run(*sjobd).stdout
    job_id = detach("python3", str(WRITER), "--lines", "40000", "--pause", "0.0002", "--size", "200")
    follower = subprocess.Popen([SJOB, "logs", "-f", "--stdout", job_id], stdout=subprocess.PIPE, cwd="/")
    rotations = 0
    while sjob("status", job_id).stdout.find(b"running") >= 0 and rotations < 200:
        run("journalctl", "--rotate")
        rotations += 1
        time.sleep(0.2)
    out, _ = follower.communicate(timeout=300)
    expected = b"".join(b"line %d %s\n" % (i, b"." * 200) for i in range(40000))  # writer.py's --size
    assert rotations >= 3
    assert run(*sjobd).stdout == before, "sjobd was restarted while the journal rotated"
    unprotected = run("journalctl", "-q", "-o", "cat", "-u", "sjobd.service", "--grep", "no SIGBUS handler").stdout
    assert unprotected == b"", unprotected  # the handler is installed (journal.survive_truncated_files)
    assert out == expected, lines_amiss(out, 40000, job_id)
    replay = sjob("logs", "--stdout", job_id).stdout
    assert replay == expected, lines_amiss(replay, 40000, job_id)


def lines_amiss(out: bytes, count: int, job_id: str) -> str:
    """What differs from writer.py's lines 0 to count-1, in numbers, with sjobd's word on the job's journal."""
    seen = [int(line.split()[1]) for line in out.splitlines() if line.startswith(b"line ")]
    missing = sorted(set(range(count)) - set(seen))
    twice = sorted(n for n, times in collections.Counter(seen).items() if times > 1)
    backwards = [(a, b) for a, b in itertools.pairwise(seen) if b <= a][:5]
    said = run("journalctl", "-q", "-u", "sjobd.service", "-o", "cat", "--grep", job_id).stdout.decode(errors="replace")
    return (
        f"{len(seen)} lines of {count}; missing {len(missing)}: {missing[:20]}; twice: {twice[:20]}; "
        f"out of order: {backwards}; sjobd said of the job:\n" + "\n".join(said.splitlines()[-15:])
    )


def test_journalctl_shows_streams_at_their_priorities() -> None:
    job_id = detach("sh", "-c", "echo to-stdout; echo to-stderr >&2")
    wait_finished(job_id)
    unit = f"sjob-{job_id}.service"
    everything = run("journalctl", "-u", unit, "-o", "cat", "--no-pager").stdout
    assert b"to-stdout" in everything
    assert b"to-stderr" in everything
    errors = run("journalctl", "-u", unit, "-p", "err", "-o", "cat", "--no-pager").stdout
    assert b"to-stderr" in errors
    assert b"to-stdout" not in errors
    story = run("journalctl", f"SJOB_JOB_ID={job_id}", "-o", "cat", "--no-pager").stdout
    assert b"to-stdout" in story
    assert b"ended: success" in story
