"""Job records in SQLite: round trip, ordering, owners, and reopening."""

import dataclasses
import sqlite3
from pathlib import Path

import pytest

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
