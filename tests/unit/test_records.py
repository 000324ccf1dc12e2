"""Job records in SQLite: round trip, ordering, owners, and reopening."""

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from supervisor.errors import ErrorCode, SjobError
from supervisor.policy import Retention
from supervisor.protocol import Job, JobState
from supervisor.records import JobRecords


def job(job_id: str, uid: int, created: int, state: JobState = JobState.running) -> Job:
    return Job(job_id, f"sjob-{job_id}.service", state, uid, f"user{uid}", ["/bin/echo", "ü", "$x"], "/tmp", created)


def test_round_trip_and_listing(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "state" / "jobs.sqlite")
    for i, uid in enumerate([1000, 1001, 1000]):
        records.insert(job(f"0000000{i}", uid, created=i))
    finished = dataclasses.replace(job("00000000", 1000, 0), state=JobState.failed, exit_status=3, ended_usec=9)
    records.update(finished)
    assert records.get("00000000") == finished
    assert records.get("ffffffff") is None
    assert [j.id for j in records.list_jobs()] == ["00000002", "00000001", "00000000"]
    assert [j.id for j in records.list_jobs(uid=1000)] == ["00000002", "00000000"]
    assert {j.id for j in records.unfinished()} == {"00000001", "00000002"}
    assert [j.id for j in records.unfinished(1000)] == ["00000002"]
    records.close()
    reopened = JobRecords(tmp_path / "state" / "jobs.sqlite")
    assert reopened.get("00000000") == finished
    assert (tmp_path / "state" / "jobs.sqlite").stat().st_mode & 0o777 == 0o600


def test_refuses_a_database_from_the_future(tmp_path: Path) -> None:
    JobRecords(tmp_path / "jobs.sqlite").close()
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RuntimeError, match="newer sjobd"):
        JobRecords(tmp_path / "jobs.sqlite")


def test_retention_keeps_each_user_s_newest_finished_and_every_unfinished(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    keep = Retention(max_age_usec=1000, per_user=3)
    running = job("000000aa", 1000, created=0)
    records.insert(running, keep)
    for i in range(1, 8):
        started = job(f"0000000{i}", 1000, created=i)
        records.insert(started, keep)
        records.update(dataclasses.replace(started, state=JobState.exited, ended_usec=i))
        records.insert(job(f"1000000{i}", 1001, created=i), keep)  # another user's, unfinished: never dropped
    # The three newest finished of uid 1000, and the running one, however old.
    assert [j.id for j in records.list_jobs(uid=1000)] == ["00000007", "00000006", "00000005", "000000aa"]
    assert len(records.list_jobs(uid=1001)) == 7
    assert records.prune(keep, now_usec=1006) == 1  # 00000005 ended at 5 < 1006 - 1000; 6 and 7 stay
    assert [j.id for j in records.list_jobs(uid=1000)] == ["00000007", "00000006", "000000aa"]


def test_a_full_disk_is_a_storage_error_and_reads_go_on(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    records.insert(job("00000001", 1000, created=1))
    # SQLite's own cap on the file's size gives exactly the SQLITE_FULL a full file system gives.
    records._db.execute("PRAGMA max_page_count = " + str(records._db.execute("PRAGMA page_count").fetchone()[0]))
    big = dataclasses.replace(job("00000002", 1000, created=2), argv=["x" * 100_000])  # more than a free page
    with pytest.raises(SjobError) as e:
        records.insert(big)
    assert e.value.code is ErrorCode.StorageError
    assert "database or disk is full" in e.value.message
    assert "df -h" in (e.value.hint or "")
    assert records.get("00000001") is not None
    assert not records._db.in_transaction  # rolled back: the next write can succeed once there is room
