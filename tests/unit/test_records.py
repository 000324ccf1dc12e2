"""Job records in SQLite: round trip, ordering, owners, and reopening."""

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest

from supervisor import statedb
from supervisor.errors import ErrorCode, SjobError
from supervisor.ledger import Ledger
from supervisor.logformat import ExitRecord
from supervisor.policy import Retention
from supervisor.protocol import Attempt, Job, JobState, Resources, Retry, RetryOn, Schedule, Timer, TimerState
from supervisor.records import JobRecords
from supervisor.units import outcome_of_exit

from .fakes import FakeJobLog


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


def damage(path: Path, how: str) -> None:
    """Damage the database at `path` as a failing disk, or something else writing it, could."""
    if how in ("not a database", "a broken page", "an unknown file format"):
        data = bytearray(path.read_bytes())
        if how == "not a database":
            data[:16] = b"definitely not!!"
        elif how == "a broken page":
            data[4096 * 2] = 0xFF  # the third page's b-tree page type: no such type
        else:
            data[44:48] = (99).to_bytes(4, "big")  # the header's schema format number
        path.write_bytes(bytes(data))
        return
    db = sqlite3.connect(path)
    if how == "a broken index":  # an entry no longer matches its row; quick_check does not look (review of H)
        # (jobs_by_state's first page: its root, or its only leaf, holds states either way)
        ((root,),) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs_by_state'").fetchall()
        db.close()
        data = bytearray(path.read_bytes())
        page = slice((root - 1) * 4096, root * 4096)
        at = data[page].index(b"running") + page.start
        data[at : at + 7] = b"runninX"
        path.write_bytes(bytes(data))
        return
    db.execute("PRAGMA writable_schema=ON")  # a schema entry's name that is not UTF-8: Python cannot decode SQLite's
    db.execute("UPDATE sqlite_master SET name = CAST(X'6A6F6273FF' AS TEXT) WHERE name = 'jobs_by_state'")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "how", ["not a database", "a broken page", "an unknown file format", "a broken index", "a schema not UTF-8"]
)
def test_damaged_records_are_set_aside_and_new_ones_begin(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """sjobd failed at every start on a damaged jobs.sqlite, until systemd gave up on it. Now the file is moved
    aside, kept as it was, and new records begin (sjobd then adopts the jobs systemd runs)."""
    path = tmp_path / "jobs.sqlite"
    records = JobRecords(path)
    for i in range(200):  # a few pages of them
        records.insert(job(f"{i:08x}", 1000, created=i))
    records.close()
    damage(path, how)
    data = path.read_bytes()
    fresh = JobRecords(path)
    assert fresh.get("00000000") is None
    fresh.insert(job("0000ffff", 1000, created=1))
    assert [j.id for j in fresh.list_jobs()] == ["0000ffff"]
    (aside,) = tmp_path.glob("jobs.sqlite.damaged-*[0-9]Z")
    assert aside.read_bytes() == data
    assert aside.stat().st_mode & 0o777 == 0o600
    assert any(f"{path} is damaged" in message for message in caplog.messages)
    fresh.close()
    JobRecords(path).close()  # sound now: kept
    assert len(list(tmp_path.glob("jobs.sqlite.damaged-*[0-9]Z"))) == 1


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
    assert records.oldest_end() == 5  # what the next prune drops first, and when (sjobd sleeps until then)
    assert records.prune(keep, now_usec=1006) == 1  # 00000005 ended at 5 < 1006 - 1000; 6 and 7 stay
    assert [j.id for j in records.list_jobs(uid=1000)] == ["00000007", "00000006", "000000aa"]
    assert records.oldest_end() == 6
    assert [j.id for j in records.unfinished(unit="sjob-000000aa.service")] == ["000000aa"]
    assert records.unfinished(unit="sjob-00000007.service") == []  # finished


def test_the_oldest_end_counts_ended_timers_and_nothing_unfinished(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    assert records.oldest_end() is None
    records.insert(job("00000001", 1000, created=1))
    assert records.oldest_end() is None  # running: never pruned
    timer = Timer("000000ee", "sjob-000000ee.timer", TimerState.active, 1000, "alice", ["/bin/true"], "/", 1,
                  Schedule("yearly", None, None))  # fmt: skip
    records.insert_timer(timer, "{}")
    records.update_timer(dataclasses.replace(timer, state=TimerState.removed, ended_usec=40))
    assert records.oldest_end() == 40
    records.update(dataclasses.replace(job("00000001", 1000, created=1), state=JobState.exited, ended_usec=50))
    assert records.oldest_end() == 40


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


def test_records_damaged_while_sjobd_runs_say_so_and_how_to_go_on(tmp_path: Path) -> None:
    """A write that finds the file damaged is a StorageError that says so (not "free space", as a full disk's
    does), and how to go on: a restart sets the file aside (test_damaged_records_are_set_aside_...)."""
    path = tmp_path / "jobs.sqlite"
    records = JobRecords(path)
    for i in range(200):
        records.insert(job(f"{i:08x}", 1000, created=i))
    records._db.close()
    data = bytearray(path.read_bytes())
    data[4096] = 0xFF  # the jobs table's root page: no such page type
    path.write_bytes(bytes(data))
    records._db = statedb._open(path)  # as opened before the damage, with nothing of it cached
    with pytest.raises(SjobError) as e:
        records.update(dataclasses.replace(job("00000001", 1000, created=1), state=JobState.exited))
    assert e.value.code is ErrorCode.StorageError
    assert "malformed" in e.value.message
    assert "systemctl restart sjobd" in (e.value.hint or "")
    records.close()


def test_a_queued_job_keeps_what_starting_it_needs_until_it_leaves_the_queue(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    for i in (2, 1, 3):
        records.insert(job(f"0000000{i}", 1000, created=i, state=JobState.queued), pending=f"pending {i}")
    records.insert(job("00000009", 1001, created=0, state=JobState.queued), pending="bob's")
    records.insert(job("0000000a", 1000, created=0))
    assert [(j.id, p) for j, p in records.queued(1000)] == [
        ("00000001", "pending 1"),
        ("00000002", "pending 2"),
        ("00000003", "pending 3"),
    ]
    assert [j.id for j in records.unfinished(1000)] == ["0000000a"]  # waiting is not running
    records.update(dataclasses.replace(job("00000001", 1000, created=1), state=JobState.starting))
    assert [j.id for j, _ in records.queued()] == ["00000009", "00000002", "00000003"]
    pending = records._db.execute("SELECT pending FROM jobs WHERE id = '00000001'").fetchone()[0]
    assert pending is None  # gone with the queue


def test_retries_attempts_and_timer_runs_round_trip(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    retried = dataclasses.replace(
        job("00000001", 1000, created=1),
        retry=Retry(2, 5_000_000, RetryOn.any),
        attempts=[Attempt(1, 10, "exit-code", 1, None, "a" * 32), Attempt(2, 20, "signal", None, 9, "b" * 32)],
    )
    records.insert(retried)
    assert records.get("00000001") == retried
    run = dataclasses.replace(job("00000002", 1000, created=2), timer="0000000f", invocation="c" * 32)
    records.insert(run)
    assert records.find_run("0000000f", "c" * 32) == run
    assert records.find_run("0000000f", "d" * 32) is None
    assert records.runs("0000000f") == (1, "00000002")


def test_timers_share_the_id_space_of_jobs(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    timer = Timer(
        "0000000f",
        "sjob-0000000f.timer",
        TimerState.active,
        1000,
        "alice",
        ["/bin/true"],
        "/",
        5,
        Schedule("daily", None, None),
        profile="strict",
    )
    records.insert_timer(timer, '{"who": "alice"}')
    records.insert(job("00000001", 1000, created=1))
    assert records.get_timer("0000000f") == timer
    assert records.timer_principal("0000000f") == '{"who": "alice"}'
    assert [records.id_taken(i) for i in ("0000000f", "00000001", "00000002")] == [True, True, False]
    removed = dataclasses.replace(timer, state=TimerState.removed, removed_by="alice", ended_usec=9)
    records.update_timer(removed)
    assert records.timers(1000) == [removed]
    assert records.timers(1000, active=True) == []
    records.delete_timer("0000000f")
    assert records.get_timer("0000000f") is None


def test_a_schema_5_database_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, unit TEXT NOT NULL, state TEXT NOT NULL, uid INTEGER NOT NULL,"
        " user TEXT NOT NULL, argv TEXT NOT NULL, cwd TEXT NOT NULL, created_usec INTEGER NOT NULL,"
        " started_usec INTEGER, ended_usec INTEGER, result TEXT, exit_status INTEGER, signal INTEGER, message TEXT,"
        " stopped_by TEXT, resources TEXT, limits TEXT, profile TEXT, input TEXT, function TEXT, version INTEGER,"
        " bytes_in INTEGER, bytes_out INTEGER, dynamic INTEGER NOT NULL DEFAULT 0);"
        " INSERT INTO jobs (id, unit, state, uid, user, argv, cwd, created_usec)"
        " VALUES ('00000001', 'sjob-00000001.service', 'exited', 1000, 'alice', '[\"/bin/true\"]', '/', 1);"
        " PRAGMA user_version=5;"
    )
    db.close()
    records = JobRecords(path)
    old = records.get("00000001")
    assert old is not None
    assert (old.state, old.retry, old.attempts, old.timer, old.token_id) == (JobState.exited, None, None, None, None)
    assert records.timers() == []
    assert records._db.execute("PRAGMA user_version").fetchone()[0] == 7
    records.update(dataclasses.replace(old, token_id="t1"))  # noqa: S106 - schema 7: the token that started a job
    assert (records.get("00000001") or old).token_id == "t1"  # noqa: S105


def test_ended_timers_are_kept_like_finished_jobs(tmp_path: Path) -> None:
    """Review of J: a loop of making and removing timers grew the table without bound (each row may hold a
    128 KiB command line). Each user keeps the newest KEEP_ENDED_TIMERS ended ones; retention's age drops the rest."""
    from supervisor.records import KEEP_ENDED_TIMERS  # noqa: PLC0415

    records = JobRecords(tmp_path / "jobs.sqlite")

    def timer(n: int, uid: int = 1000) -> Timer:
        return Timer(
            f"{n:08x}", f"sjob-{n:08x}.timer", TimerState.active, uid, "alice", ["/bin/true"], "/", n,
            Schedule("yearly", None, None),
        )  # fmt: skip

    records.insert_timer(timer(1, uid=2000), "{}")
    for n in range(2, KEEP_ENDED_TIMERS + 12):
        made = timer(n)
        records.insert_timer(made, "{}")
        records.update_timer(dataclasses.replace(made, state=TimerState.removed, ended_usec=n))
    active = timer(999)
    records.insert_timer(active, "{}")
    kept = records.timers(1000)
    assert len([t for t in kept if t.state is TimerState.removed]) == KEEP_ENDED_TIMERS - 1
    assert active in kept
    assert [t.id for t in records.timers(2000)] == [f"{1:08x}"]  # another user's are theirs
    records.prune(Retention(max_age_usec=10, per_user=1000), now_usec=10**6)
    assert [t.state for t in records.timers(1000)] == [TimerState.active]


def test_a_job_is_marked_running_only_while_it_is_starting(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs.sqlite")
    starting = dataclasses.replace(job("00000001", 1000, created=1, state=JobState.starting), stopped_by="bob")
    records.insert(starting)
    running = records.set_running("00000001", 42)
    assert running == dataclasses.replace(starting, state=JobState.running, started_usec=42)  # the rest kept
    ended = dataclasses.replace(running, state=JobState.exited, ended_usec=50, exit_status=0)
    records.update(ended)
    assert records.set_running("00000001", 43) == ended  # too late: unchanged
    assert records.set_running("0000000f", 44) is None


def test_an_end_is_logged_once_and_readably(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A job's end is often recorded twice: when its main process exited (the answer `sjob run` waits for), then
    with its exit record, which adds what it used. sjobd's log said "ended: Outcome(state=<JobState...>...)" twice
    alike; now once, as `journalctl -u sjobd` readers expect, and a different outcome is logged again."""
    caplog.set_level(logging.INFO)
    records = JobRecords(tmp_path / "jobs.sqlite")
    ledger = Ledger(records, FakeJobLog())
    records.insert(job("00000001", 1000, created=1))
    running = records.get("00000001")
    assert running is not None
    ledger.finish(running, outcome_of_exit(ExitRecord("success", "exited", 0)), 5)
    used = Resources(cpu_usec=1500, memory_peak_bytes=4096, io_read_bytes=0, io_write_bytes=10, tasks_peak=None)
    ended = ledger.record_exit("00000001", ExitRecord("success", "exited", 0, 6, resources=used))
    assert ended is not None
    assert ended.resources == used
    assert [m for m in caplog.messages if "ended" in m] == ["sjob-00000001.service ended: exited (success, status 0)"]
    ledger.record_exit("00000001", ExitRecord("signal", "killed", 9, 7, resources=used))
    assert caplog.messages[-1] == "sjob-00000001.service ended: failed (signal, SIGKILL): killed by signal SIGKILL"


def test_a_write_python_refuses_is_still_a_storage_error(tmp_path: Path) -> None:
    """Errors Python raises itself (a closed connection: a late write at shutdown) carry no SQLite error code: the
    damage check must not turn them into an AttributeError (review of H)."""
    records = JobRecords(tmp_path / "jobs.sqlite")
    records.close()
    with pytest.raises(SjobError) as e:
        records.insert(job("00000001", 1000, created=1))
    assert e.value.code is ErrorCode.StorageError
    assert "df -h" in (e.value.hint or "")
