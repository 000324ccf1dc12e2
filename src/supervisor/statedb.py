"""SQLite files in sjobd's state directory (job records, issued tokens): private to root, written through WAL.

The file is created 0600 before SQLite opens it, in a directory created 0700, so no moment exists in which another
user could open it.
"""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from supervisor.errors import ErrorCode, SjobError

log = logging.getLogger(__name__)


def open_state_db(path: Path, if_damaged: str) -> sqlite3.Connection:
    """Open (creating if needed) a private SQLite database in autocommit mode, usable from any thread.

    A file SQLite finds damaged (not a database, a header or schema it cannot read, or a page or index that fails
    its integrity check: a failing disk, something else writing it) is moved aside as `<name>.damaged-<time>`, and
    a new one begins; `if_damaged` says what that means, for the log. Before, sjobd failed at every start until
    systemd gave up on it. Other errors (a disk that cannot be read, a file locked) are raised: nothing says the
    file is damaged. Not even a damaged index is rebuilt in place: a row's damaged value looks the same, and
    REINDEX writes into the damaged file (review of H); the file set aside keeps all there was, for salvage. The
    check reads the whole file: 0.2 to 2 s for a few hundred MB natively, as reviewers measured, inside systemd's
    90 s for a start (the retention bounds the job records to about 128 MB a user)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db: sqlite3.Connection | None = None
    try:
        db = _open(path)
        # integrity_check, not quick_check: only it compares indexes with their tables, and sjobd reads its
        # unfinished jobs through an index (review of H: a damaged index passed quick_check, failed every start).
        (verdict,) = db.execute("PRAGMA integrity_check(1)").fetchone()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        # UnicodeDecodeError: SQLite's own message about a schema that is not UTF-8, which Python cannot decode.
        if db is not None:
            db.close()
        if isinstance(e, sqlite3.DatabaseError) and not _damaged(e):
            raise
        db, verdict = None, str(e)
    if db is not None:
        if verdict == "ok":
            return db
        db.close()
    # Not one taken earlier by a restart within the same second: the time to the microsecond.
    when = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.damaged-{when}")
    for suffix in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    log.error("%s is damaged (%s): moved to %s; %s", path, verdict, aside, if_damaged)
    return _open(path)


def _damaged(e: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged: by the error's primary code, or a file format it does not know (a
    header byte gone wrong). Errors Python itself raises (a closed connection) carry no code."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or str(e).startswith("unsupported file format")


def _open(path: Path) -> sqlite3.Connection:
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextmanager
def writing(db: sqlite3.Connection, path: Path, what: str) -> Iterator[None]:
    """One transaction, all of it or nothing (the connection is in autocommit mode otherwise). SQLITE_FULL
    ("database or disk is full"), SQLITE_IOERR, SQLITE_READONLY, what a full or failing disk gives, become a
    StorageError saying what could not be written (`what`): reads go on working, so sjobd still answers."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise SjobError(
            ErrorCode.StorageError,
            f"sjobd cannot write {what} in {path}: {e}",
            hint="the file is damaged: 'systemctl restart sjobd' sets it aside and begins a new one"
            if _damaged(e)
            else f"free space on the file system of {path.parent} (df -h {path.parent})",
        ) from None
