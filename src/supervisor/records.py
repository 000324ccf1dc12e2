"""Job records on disk: one SQLite database in sjobd's state directory (/var/lib/sjob/jobs.sqlite).

A record is written before the unit is started and updated when the job starts and ends, so a job is never
running without a record. SQLite in WAL mode gives atomic updates that survive sjobd being killed at any point;
the calls are short and run on the event loop.

Records of finished jobs are pruned by the policy's retention ([records]): a user's oldest beyond their count as
each new job is inserted, and by age as each becomes due, so the database stays bounded. A write that fails (a
full disk) is a StorageError: a start is refused before any unit exists, and sjobd keeps serving; a job's end that
could not be written is written again by a sweep a while later, from the journal.

A queued job (issue J) is a record in state queued whose `pending` column holds what starting it later needs (the
queue's own JSON): one row, written in one transaction, so the queue survives sjobd being killed at any point.
Timers are records of their own (the `timers` table), in the same id space as jobs: `sjob stop ID` names either.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import AbstractContextManager
from pathlib import Path

from supervisor.policy import Retention
from supervisor.protocol import (
    Attempt,
    Input,
    Job,
    JobState,
    Limits,
    Resources,
    Retry,
    Schedule,
    Timer,
    TimerState,
    from_wire,
    to_wire,
)
from supervisor.statedb import open_state_db, writing

SCHEMA_VERSION = 7
_COLUMNS = [f.name for f in dataclasses.fields(Job) if f.name != "position"]  # a queue position is not stored
_TIMER_COLUMNS = [
    f.name for f in dataclasses.fields(Timer) if f.name not in ("next_usec", "last_usec", "last_job", "runs")
]
_FINISHED = tuple(s.value for s in JobState if s.finished)
_RUNNING = tuple(s.value for s in JobState if not s.finished and s is not JobState.queued)
_IO_COLUMNS = ("bytes_in", "bytes_out")
KEEP_ENDED_TIMERS = 100  # per user: the newest ended (removed, elapsed, gone) timers kept as history
_TIMERS_SCHEMA = """
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs (timer, invocation);
CREATE TABLE IF NOT EXISTS timers (
    id TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    state TEXT NOT NULL,
    uid INTEGER NOT NULL,
    user TEXT NOT NULL,
    argv TEXT NOT NULL,
    cwd TEXT NOT NULL,
    created_usec INTEGER NOT NULL,
    schedule TEXT NOT NULL,
    limits TEXT,
    profile TEXT,
    ended_usec INTEGER,
    removed_by TEXT,
    message TEXT,
    principal TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS timers_by_owner ON timers (uid, created_usec);
"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    state TEXT NOT NULL,
    uid INTEGER NOT NULL,
    user TEXT NOT NULL,
    argv TEXT NOT NULL,
    cwd TEXT NOT NULL,
    created_usec INTEGER NOT NULL,
    started_usec INTEGER,
    ended_usec INTEGER,
    result TEXT,
    exit_status INTEGER,
    signal INTEGER,
    message TEXT,
    stopped_by TEXT,
    resources TEXT,
    limits TEXT,
    profile TEXT,
    input TEXT,
    function TEXT,
    version INTEGER,
    bytes_in INTEGER,
    bytes_out INTEGER,
    dynamic INTEGER NOT NULL DEFAULT 0,
    retry TEXT,
    attempts TEXT,
    timer TEXT,
    invocation TEXT,
    token_id TEXT,
    pending TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (uid, created_usec);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_function ON jobs (function, created_usec);
"""
    + _TIMERS_SCHEMA
)
# How to bring a database of schema version N (the key) up to N+1.
_MIGRATIONS = {
    1: "ALTER TABLE jobs ADD COLUMN stopped_by TEXT; ALTER TABLE jobs ADD COLUMN resources TEXT;",
    2: "ALTER TABLE jobs ADD COLUMN limits TEXT; ALTER TABLE jobs ADD COLUMN profile TEXT;",
    3: "ALTER TABLE jobs ADD COLUMN input TEXT;",
    4: "ALTER TABLE jobs ADD COLUMN function TEXT; ALTER TABLE jobs ADD COLUMN version INTEGER;"
    " ALTER TABLE jobs ADD COLUMN bytes_in INTEGER; ALTER TABLE jobs ADD COLUMN bytes_out INTEGER;"
    " ALTER TABLE jobs ADD COLUMN dynamic INTEGER NOT NULL DEFAULT 0;"
    " CREATE INDEX IF NOT EXISTS jobs_by_function ON jobs (function, created_usec);",
    5: "ALTER TABLE jobs ADD COLUMN retry TEXT; ALTER TABLE jobs ADD COLUMN attempts TEXT;"
    " ALTER TABLE jobs ADD COLUMN timer TEXT; ALTER TABLE jobs ADD COLUMN invocation TEXT;"
    " ALTER TABLE jobs ADD COLUMN pending TEXT;" + _TIMERS_SCHEMA,
    6: "ALTER TABLE jobs ADD COLUMN token_id TEXT;",
}


class JobRecords:
    """The store of all jobs sjobd has started."""

    def __init__(self, path: Path) -> None:
        self._path = path
        # Damaged records set aside: sjobd adopts the jobs systemd runs (Reaper.reconcile), as after a lost file.
        self._db = open_state_db(path, "new job records begin, and sjobd adopts the jobs systemd runs")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer sjobd (schema {version} > {SCHEMA_VERSION})")
        # A file made now (the first start, records lost, or set aside as damaged): systemd may run jobs and timers
        # of sjob's that it has no record of (Reaper.reconcile, TimerService.reconcile). By the table, not the
        # version: records restored with sqlite3's .dump or .recover have version 0 (review of H).
        self.began_anew = not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone()
        if version == 0:
            self._db.executescript(_SCHEMA)
        else:
            for step in range(version, SCHEMA_VERSION):
                self._db.executescript(f"BEGIN; {_MIGRATIONS[step]} COMMIT;")
        if version != SCHEMA_VERSION:  # only then: sjobd must start, read-only, on a full disk
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def insert(self, job: Job, retention: Retention | None = None, pending: str | None = None) -> None:
        """Record a new job; with `retention`, drop the owner's oldest finished records so that, this one counted,
        no more than its count remain once this one has ended too. A queued job comes with what starting it
        later needs (`pending`), kept until it leaves the queue."""
        finished = ", ".join("?" * len(_FINISHED))
        columns = [*_COLUMNS, "pending"]
        placeholders = ", ".join("?" * len(columns))
        with self._writing():
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({placeholders})",  # noqa: S608
                [*_row(job), pending],
            )
            if retention is not None:
                self._db.execute(
                    f"DELETE FROM jobs WHERE uid = ? AND state IN ({finished}) AND id NOT IN"  # noqa: S608
                    f" (SELECT id FROM jobs WHERE uid = ? AND state IN ({finished})"
                    " ORDER BY created_usec DESC LIMIT ?)",
                    [job.uid, *_FINISHED, job.uid, *_FINISHED, retention.per_user - 1],
                )

    def update(self, job: Job) -> None:
        """Write the job's record, all but what only `set_io` writes (bytes in and out, counted elsewhere and
        later: a stale copy of the job must not undo them)."""
        columns = [c for c in _COLUMNS[1:] if c not in _IO_COLUMNS]
        row = dict(zip(_COLUMNS, _row(job), strict=True))
        # A job that left the queue no longer needs what starting it took.
        keep = ", pending = NULL" if job.state is not JobState.queued else ""
        with self._writing():
            self._db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in columns)}{keep} WHERE id = ?",  # noqa: S608
                [*(row[c] for c in columns), job.id],
            )

    def set_running(self, job_id: str, started_usec: int) -> Job | None:
        """Mark a starting job running since `started_usec`, and return its record as it is then. Only a job still
        starting changes: not `update` with a copy read before a D-Bus round trip, which would undo what was
        recorded meanwhile (its end, or who stopped it)."""
        with self._writing():
            self._db.execute(
                "UPDATE jobs SET state = ?, started_usec = ? WHERE id = ? AND state = ?",
                [JobState.running.value, started_usec, job_id, JobState.starting.value],
            )
        return self.get(job_id)

    def set_io(self, job_id: str, *, bytes_in: int | None = None, bytes_out: int | None = None) -> None:
        """Record how many bytes a function's call was given and wrote (each only if given)."""
        with self._writing():
            for column, value in (("bytes_in", bytes_in), ("bytes_out", bytes_out)):
                if value is not None:
                    self._db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", [value, job_id])  # noqa: S608

    def prune(self, retention: Retention, now_usec: int) -> int:
        """Drop the records of jobs that ended more than the retention's age ago; how many were dropped."""
        with self._writing():
            cursor = self._db.execute(
                f"DELETE FROM jobs WHERE state IN ({', '.join('?' * len(_FINISHED))}) AND ended_usec < ?",  # noqa: S608
                [*_FINISHED, now_usec - retention.max_age_usec],
            )
            self._db.execute(
                "DELETE FROM timers WHERE ended_usec IS NOT NULL AND ended_usec < ?",
                [now_usec - retention.max_age_usec],
            )
        return cursor.rowcount

    def oldest_end(self) -> int | None:
        """When the longest-ended finished job or ended timer ended (what `prune` drops first), if any."""
        finished = ", ".join("?" * len(_FINISHED))
        row = self._db.execute(
            f"SELECT MIN(ended) FROM (SELECT MIN(ended_usec) AS ended FROM jobs WHERE state IN ({finished})"  # noqa: S608
            " UNION ALL SELECT MIN(ended_usec) FROM timers)",
            _FINISHED,
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def _writing(self) -> AbstractContextManager[None]:
        return writing(self._db, self._path, "its job records")

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", [job_id]).fetchone()  # noqa: S608
        return _job(row) if row else None

    def list_jobs(self, uid: int | None = None, limit: int = 1000) -> list[Job]:
        """Newest first; all owners when `uid` is None."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs"  # noqa: S608
        args: list[object] = []
        if uid is not None:
            query += " WHERE uid = ?"
            args.append(uid)
        query += " ORDER BY created_usec DESC LIMIT ?"
        args.append(limit)
        return [_job(row) for row in self._db.execute(query, args)]

    def calls(self, function: str, *, uid: int | None = None, limit: int = 1000, since_usec: int = 0) -> list[Job]:
        """A function's calls since `since_usec`, newest first; only `uid`'s when given."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE function = ? AND created_usec >= ?"  # noqa: S608
        args: list[object] = [function, since_usec]
        if uid is not None:
            query += " AND uid = ?"
            args.append(uid)
        query += " ORDER BY created_usec DESC LIMIT ?"
        args.append(limit)
        return [_job(row) for row in self._db.execute(query, args)]

    def running_calls(self, function: str, *, user: str | None = None) -> int:
        """How many calls of `function` (by `user`, the principal's name, if given) have not ended."""
        states = [s.value for s in JobState if not s.finished]
        query = f"SELECT COUNT(*) FROM jobs WHERE function = ? AND state IN ({', '.join('?' * len(states))})"  # noqa: S608
        args: list[object] = [function, *states]
        if user is not None:
            query += " AND user = ?"
            args.append(user)
        return int(self._db.execute(query, args).fetchone()[0])

    def unfinished(self, uid: int | None = None, *, unit: str | None = None) -> list[Job]:
        """Jobs started and not yet ended (not those waiting in a queue); only `uid`'s, or `unit`'s, when given."""
        args: list[object] = list(_RUNNING)
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({', '.join('?' * len(args))})"  # noqa: S608
        for column, value in (("uid", uid), ("unit", unit)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        return [_job(row) for row in self._db.execute(query, args)]

    def queued(self, uid: int | None = None) -> list[tuple[Job, str]]:
        """Queued jobs with what starting each needs, first come first; only `uid`'s when given."""
        query = f"SELECT {', '.join(_COLUMNS)}, pending FROM jobs WHERE state = ?"  # noqa: S608
        args: list[object] = [JobState.queued.value]
        if uid is not None:
            query += " AND uid = ?"
            args.append(uid)
        query += " ORDER BY created_usec, rowid"
        return [(_job(row[:-1]), str(row[-1] or "")) for row in self._db.execute(query, args)]

    def find_run(self, timer: str, invocation: str) -> Job | None:
        """The job that is the run of `timer` systemd started as `invocation`."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE timer = ? AND invocation = ?"  # noqa: S608
        row = self._db.execute(query, [timer, invocation]).fetchone()
        return _job(row) if row else None

    def runs(self, timer: str) -> tuple[int, str | None]:
        """How many runs of `timer` are recorded, and the id of the latest."""
        count = self._db.execute("SELECT COUNT(*) FROM jobs WHERE timer = ?", [timer]).fetchone()[0]
        latest = self._db.execute(
            "SELECT id FROM jobs WHERE timer = ? ORDER BY created_usec DESC, rowid DESC LIMIT 1", [timer]
        ).fetchone()
        return int(count), latest[0] if latest else None

    def id_taken(self, some_id: str) -> bool:
        """Whether a job or a timer has this id (they share the id space)."""
        return any(
            self._db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [some_id]).fetchone()  # noqa: S608
            for table in ("jobs", "timers")
        )

    # --- timers ----------------------------------------------------------------------------------------------

    def insert_timer(self, timer: Timer, principal: str) -> None:
        """Record a new timer, with who made it (JSON, to check it against a reloaded policy)."""
        columns = [*_TIMER_COLUMNS, "principal"]
        with self._writing():
            # Ended timers are history, kept like finished jobs are: at most KEEP_ENDED_TIMERS per user (review of
            # J: a loop of make-and-remove grew the table, and each row may hold a 128 KiB command line).
            self._db.execute(
                "DELETE FROM timers WHERE uid = ? AND ended_usec IS NOT NULL AND id NOT IN "
                "(SELECT id FROM timers WHERE uid = ? AND ended_usec IS NOT NULL ORDER BY ended_usec DESC LIMIT ?)",
                [timer.uid, timer.uid, KEEP_ENDED_TIMERS - 1],
            )
            self._db.execute(
                f"INSERT INTO timers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",  # noqa: S608
                [*_timer_row(timer), principal],
            )

    def delete_timer(self, timer_id: str) -> None:
        """Forget a timer systemd refused to make."""
        with self._writing():
            self._db.execute("DELETE FROM timers WHERE id = ?", [timer_id])

    def timer_principal(self, timer_id: str) -> str | None:
        row = self._db.execute("SELECT principal FROM timers WHERE id = ?", [timer_id]).fetchone()
        return str(row[0]) if row else None

    def update_timer(self, timer: Timer) -> None:
        columns = _TIMER_COLUMNS[1:]
        row = dict(zip(_TIMER_COLUMNS, _timer_row(timer), strict=True))
        with self._writing():
            self._db.execute(
                f"UPDATE timers SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",  # noqa: S608
                [*(row[c] for c in columns), timer.id],
            )

    def get_timer(self, timer_id: str) -> Timer | None:
        query = f"SELECT {', '.join(_TIMER_COLUMNS)} FROM timers WHERE id = ?"  # noqa: S608
        row = self._db.execute(query, [timer_id]).fetchone()
        return _timer(row) if row else None

    def timers(self, uid: int | None = None, *, active: bool = False) -> list[Timer]:
        """Timers, newest first: only `uid`'s when given, only those systemd runs with `active`."""
        query = f"SELECT {', '.join(_TIMER_COLUMNS)} FROM timers WHERE 1"  # noqa: S608
        args: list[object] = []
        if uid is not None:
            query += " AND uid = ?"
            args.append(uid)
        if active:
            query += " AND state = ?"
            args.append(TimerState.active.value)
        query += " ORDER BY created_usec DESC"
        return [_timer(row) for row in self._db.execute(query, args)]


def _json(value: object) -> str | None:
    return json.dumps(to_wire(value)) if value else None


def _row(job: Job) -> list[object]:
    values = [getattr(job, c) for c in _COLUMNS]
    values[_COLUMNS.index("argv")] = json.dumps(job.argv)
    values[_COLUMNS.index("state")] = job.state.value
    values[_COLUMNS.index("input")] = job.input.value if job.input is not None else None
    for column in ("resources", "limits", "retry", "attempts"):
        values[_COLUMNS.index(column)] = _json(getattr(job, column))
    return values


def _job(row: tuple[object, ...]) -> Job:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["argv"] = json.loads(str(values["argv"]))
    values["state"] = JobState(str(values["state"]))
    for column, kind in (("resources", Resources), ("limits", Limits), ("retry", Retry)):
        if values[column] is not None:
            values[column] = from_wire(kind, json.loads(str(values[column])))
    if values["attempts"] is not None:
        values["attempts"] = [from_wire(Attempt, a) for a in json.loads(str(values["attempts"]))]
    if values["input"] is not None:
        values["input"] = Input(str(values["input"]))
    values["dynamic"] = bool(values["dynamic"])
    return Job(**values)  # type: ignore[arg-type]


def _timer_row(timer: Timer) -> list[object]:
    values = [getattr(timer, c) for c in _TIMER_COLUMNS]
    values[_TIMER_COLUMNS.index("argv")] = json.dumps(timer.argv)
    values[_TIMER_COLUMNS.index("state")] = timer.state.value
    values[_TIMER_COLUMNS.index("schedule")] = json.dumps(to_wire(timer.schedule))
    values[_TIMER_COLUMNS.index("limits")] = _json(timer.limits)
    return values


def _timer(row: tuple[object, ...]) -> Timer:
    values = dict(zip(_TIMER_COLUMNS, row, strict=True))
    values["argv"] = json.loads(str(values["argv"]))
    values["state"] = TimerState(str(values["state"]))
    values["schedule"] = from_wire(Schedule, json.loads(str(values["schedule"])))
    if values["limits"] is not None:
        values["limits"] = from_wire(Limits, json.loads(str(values["limits"])))
    return Timer(**values)  # type: ignore[arg-type]
