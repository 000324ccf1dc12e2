"""Job records on disk: one SQLite database in sjobd's state directory (/var/lib/sjob/jobs.sqlite).

A record is written before the unit is started and updated when the job starts and ends, so a job is never
running without a record. SQLite in WAL mode gives atomic updates that survive sjobd being killed at any point;
the calls are short and run on the event loop.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from supervisor.protocol import Job, JobState, Limits, Resources, from_wire, to_wire
from supervisor.statedb import open_state_db

SCHEMA_VERSION = 3
_COLUMNS = [f.name for f in dataclasses.fields(Job)]
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
    profile TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (uid, created_usec);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
"""
# How to bring a database of schema version N (the key) up to N+1.
_MIGRATIONS = {
    1: "ALTER TABLE jobs ADD COLUMN stopped_by TEXT; ALTER TABLE jobs ADD COLUMN resources TEXT;",
    2: "ALTER TABLE jobs ADD COLUMN limits TEXT; ALTER TABLE jobs ADD COLUMN profile TEXT;",
}


class JobRecords:
    """The store of all jobs sjobd has started."""

    def __init__(self, path: Path) -> None:
        self._db = open_state_db(path)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer sjobd (schema {version} > {SCHEMA_VERSION})")
        if version == 0:
            self._db.executescript(_SCHEMA)
        else:
            for step in range(version, SCHEMA_VERSION):
                self._db.executescript(f"BEGIN; {_MIGRATIONS[step]} COMMIT;")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def insert(self, job: Job) -> None:
        placeholders = ", ".join("?" * len(_COLUMNS))
        self._db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _row(job))  # noqa: S608

    def update(self, job: Job) -> None:
        assignments = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*_row(job)[1:], job.id])  # noqa: S608

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
    return Job(**values)  # type: ignore[arg-type]
