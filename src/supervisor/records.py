"""Job records on disk: one SQLite database in sjobd's state directory (/var/lib/sjob/jobs.sqlite).

A record is written before the unit is started and updated when the job starts and ends, so a job is never
running without a record. SQLite in WAL mode gives atomic updates that survive sjobd being killed at any point;
the calls are short and run on the event loop.

Records of finished jobs are pruned by the policy's retention ([records]): a user's oldest beyond their count as
each new job is inserted, and by age at every sweep, so the database stays bounded. A write that fails (a full
disk) is a StorageError: a start is refused before any unit exists, and sjobd keeps serving; a job's end that
could not be written is written again by the next sweep, from the journal.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import AbstractContextManager
from pathlib import Path

from supervisor.policy import Retention
from supervisor.protocol import Input, Job, JobState, Limits, Resources, from_wire, to_wire
from supervisor.statedb import open_state_db, writing

SCHEMA_VERSION = 5
_COLUMNS = [f.name for f in dataclasses.fields(Job)]
_FINISHED = tuple(s.value for s in JobState if s.finished)
_IO_COLUMNS = ("bytes_in", "bytes_out")
_SCHEMA = """
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
    dynamic INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (uid, created_usec);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_function ON jobs (function, created_usec);
"""
# How to bring a database of schema version N (the key) up to N+1.
_MIGRATIONS = {
    1: "ALTER TABLE jobs ADD COLUMN stopped_by TEXT; ALTER TABLE jobs ADD COLUMN resources TEXT;",
    2: "ALTER TABLE jobs ADD COLUMN limits TEXT; ALTER TABLE jobs ADD COLUMN profile TEXT;",
    3: "ALTER TABLE jobs ADD COLUMN input TEXT;",
    4: "ALTER TABLE jobs ADD COLUMN function TEXT; ALTER TABLE jobs ADD COLUMN version INTEGER;"
    " ALTER TABLE jobs ADD COLUMN bytes_in INTEGER; ALTER TABLE jobs ADD COLUMN bytes_out INTEGER;"
    " ALTER TABLE jobs ADD COLUMN dynamic INTEGER NOT NULL DEFAULT 0;"
    " CREATE INDEX IF NOT EXISTS jobs_by_function ON jobs (function, created_usec);",
}


class JobRecords:
    """The store of all jobs sjobd has started."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db = open_state_db(path)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer sjobd (schema {version} > {SCHEMA_VERSION})")
        if version == 0:
            self._db.executescript(_SCHEMA)
        else:
            for step in range(version, SCHEMA_VERSION):
                self._db.executescript(f"BEGIN; {_MIGRATIONS[step]} COMMIT;")
        if version != SCHEMA_VERSION:  # only then: sjobd must start, read-only, on a full disk
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def insert(self, job: Job, retention: Retention | None = None) -> None:
        """Record a new job; with `retention`, drop the owner's oldest finished records so that, this one counted,
        no more than its count remain once this one has ended too."""
        finished = ", ".join("?" * len(_FINISHED))
        placeholders = ", ".join("?" * len(_COLUMNS))
        with self._writing():
            self._db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _row(job))  # noqa: S608
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
        with self._writing():
            self._db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",  # noqa: S608
                [*(row[c] for c in columns), job.id],
            )

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
        return cursor.rowcount

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

    def unfinished(self, uid: int | None = None) -> list[Job]:
        """Jobs not yet ended; only `uid`'s when given."""
        args: list[object] = [s.value for s in JobState if not s.finished]
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({', '.join('?' * len(args))})"  # noqa: S608
        if uid is not None:
            query += " AND uid = ?"
            args.append(uid)
        return [_job(row) for row in self._db.execute(query, args)]


def _row(job: Job) -> list[object]:
    values = [getattr(job, c) for c in _COLUMNS]
    values[_COLUMNS.index("argv")] = json.dumps(job.argv)
    values[_COLUMNS.index("state")] = job.state.value
    values[_COLUMNS.index("input")] = job.input.value if job.input is not None else None
    values[_COLUMNS.index("resources")] = json.dumps(to_wire(job.resources)) if job.resources else None
    values[_COLUMNS.index("limits")] = json.dumps(to_wire(job.limits)) if job.limits else None
    return values


def _job(row: tuple[object, ...]) -> Job:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["argv"] = json.loads(str(values["argv"]))
    values["state"] = JobState(str(values["state"]))
    if values["resources"] is not None:
        values["resources"] = from_wire(Resources, json.loads(str(values["resources"])))
    if values["limits"] is not None:
        values["limits"] = from_wire(Limits, json.loads(str(values["limits"])))
    if values["input"] is not None:
        values["input"] = Input(str(values["input"]))
    values["dynamic"] = bool(values["dynamic"])
    return Job(**values)  # type: ignore[arg-type]
