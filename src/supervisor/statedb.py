"""SQLite files in sjobd's state directory (job records, issued tokens): private to root, written through WAL.

The file is created 0600 before SQLite opens it, in a directory created 0700, so no moment exists in which another
user could open it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_state_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) a private SQLite database in autocommit mode, usable from any thread."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
