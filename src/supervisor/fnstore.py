"""Functions on disk (issue G): their settings and versions in /var/lib/sjob/functions.sqlite, their code in
/var/lib/sjob/functions/<name>/v<N>/. A version is immutable once committed: a running call keeps reading the
version it started on while a rollback or a new deploy changes what the next call gets.

A deploy first stages its code in functions/<name>/.build-<job>/: `src/` (main.py, requirements.txt; root's,
read-only) and `out/`, which its build job (running as a user systemd makes for it alone, with umask 0) fills
with the compiled bytecode and, with --requirements, a virtual environment. What the build left is not trusted,
and sjobd is root without capabilities (it cannot change another user's files): committing *copies* the build's
`__pycache__` and `venv` into new files of root's, read-only to everyone else, under a temporary name that is then
renamed into place. So no descriptor the build kept open can change a committed version, and neither can the next
user systemd hands that uid to. The copy never follows a link (links are copied as links), opens each file with
O_NOFOLLOW|O_NONBLOCK (a file the build holds a lease on fails the deploy instead of stalling it), refuses special
files, and stops at MAX_ENTRIES entries or MAX_BYTES bytes; it runs in a worker thread, off sjobd's event loop.

The whole tree lives in sjobd's state directory (0700): no user reaches it except through the bind mounts of build
(its output, writable) and call (its version, read-only) units (fnunits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from supervisor.errors import ErrorCode, SjobError
from supervisor.fnprotocol import Function, FunctionSettings, FunctionVersion
from supervisor.protocol import Limits, from_wire, to_wire
from supervisor.statedb import open_state_db, writing

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    owner_uid INTEGER NOT NULL,
    description TEXT,
    allow TEXT NOT NULL,
    limits TEXT,
    concurrency INTEGER NOT NULL,
    current INTEGER NOT NULL,
    latest INTEGER NOT NULL,
    created_usec INTEGER NOT NULL,
    updated_usec INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_usec INTEGER NOT NULL,
    deployed_by TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    requirements INTEGER NOT NULL,
    build_job TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
"""
CODE = "main.py"
REQUIREMENTS = "requirements.txt"


@dataclasses.dataclass(frozen=True, slots=True)
class Staging:
    """Where one deploy's build happens: `src` for its build to read, `out` for it to write."""

    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def copied(self) -> Path:
        return self.root / "version"


class FunctionStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "functions"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = state_dir / "functions.sqlite"
        self._db = open_state_db(self._path, "no function is known until it is deployed again")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- reading ---------------------------------------------------------------------------------------------

    def get(self, name: str) -> Function | None:
        row = self._db.execute(f"SELECT {_FUNCTION_COLUMNS} FROM functions WHERE name = ?", [name]).fetchone()  # noqa: S608
        return _function(row) if row else None

    def list_functions(self) -> list[Function]:
        rows = self._db.execute(f"SELECT {_FUNCTION_COLUMNS} FROM functions ORDER BY name")  # noqa: S608
        return [_function(row) for row in rows]

    def versions(self, name: str) -> list[FunctionVersion]:
        rows = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? ORDER BY version DESC",  # noqa: S608
            [name],
        )
        return [_version(row) for row in rows]

    def version(self, name: str, version: int) -> FunctionVersion | None:
        row = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? AND version = ?",  # noqa: S608
            [name, version],
        ).fetchone()
        return _version(row) if row else None

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version}"

    # --- deploying -------------------------------------------------------------------------------------------

    def stage(self, name: str, build_id: str, code: str, requirements: str | None) -> Staging:
        """A fresh staging directory holding the code (and requirements) for the build job `build_id`."""
        function_dir = self.root / name
        function_dir.mkdir(mode=0o755, exist_ok=True)
        # sjobd runs with UMask=0077: every mode that others need (the build's and the calls' users, through their
        # bind mounts) is set explicitly, not left to mkdir's masked mode.
        staging = Staging(function_dir / f".build-{build_id}")
        with self._storage_errors():
            staging.root.mkdir(mode=0o755)
            staging.src.mkdir()
            staging.src.chmod(0o755)
            staging.out.mkdir()
            staging.out.chmod(0o777)  # for the build's user, whoever systemd makes it; nobody else can reach it
            for file, text in ((CODE, code), (REQUIREMENTS, requirements)):
                if text is not None:
                    (staging.src / file).write_text(text, encoding="utf-8")
                    (staging.src / file).chmod(0o644)
        return staging

    def take_build(self, staging: Staging, built: tuple[str, ...]) -> None:
        """Copy what the build left (the entries `built` of its output) and the staged code into `staging.copied`,
        all root's: the version-to-be. Slow on a large build: run it in a worker thread."""
        with self._storage_errors():
            staging.copied.mkdir()
            staging.copied.chmod(0o755)
            copy_built(staging.out, staging.copied, built)
            for file in (CODE, REQUIREMENTS):
                if (staging.src / file).exists():
                    os.rename(staging.src / file, staging.copied / file)

    def discard(self, staging: Staging) -> None:
        shutil.rmtree(staging.root, ignore_errors=True)
        if staging.root.exists():  # a build that made its output unwritable to others: sjobd cannot remove it
            log.warning("could not remove all of %s; remove it by hand", staging.root)

    def commit(
        self,
        name: str,
        staging: Staging,
        *,
        owner: str,
        owner_uid: int,
        deployed_by: str,
        build_job: str,
        settings: FunctionSettings,
        default_concurrency: int,
        now_usec: int,
    ) -> tuple[Function, FunctionVersion]:
        """Make the staged, built code the function's next version, and the one calls get."""
        previous = self.get(name)
        number = (previous.latest if previous else 0) + 1
        target = self.version_dir(name, number)
        code = (staging.copied / CODE).read_bytes()
        has_requirements = (staging.copied / REQUIREMENTS).exists()
        with self._storage_errors():
            if target.exists():
                # A version sjobd has no record of: left by a deploy whose record was never written (sjobd killed
                # between the two) or was lost with a damaged functions.sqlite. It blocked every deploy of the name.
                # Moved aside, not removed: a call started before the records were lost may still run its code.
                stray = target.with_name(f"{target.name}.stray-{now_usec}")
                log.warning("%s is not a version sjobd has a record of; moved to %s", target, stray)
                os.rename(target, stray)
            os.rename(staging.copied, target)
            self.discard(staging)
        version = FunctionVersion(
            number, now_usec, deployed_by, hashlib.sha256(code).hexdigest(), len(code), has_requirements, build_job
        )
        function = Function(
            name=name,
            owner=previous.owner if previous else owner,
            owner_uid=previous.owner_uid if previous else owner_uid,
            version=number,
            latest=number,
            created_usec=previous.created_usec if previous else now_usec,
            updated_usec=now_usec,
            allow=settings.allow if settings.allow is not None else (previous.allow if previous else []),
            concurrency=settings.concurrency or (previous.concurrency if previous else default_concurrency),
            description=settings.description
            if settings.description is not None
            else (previous.description if previous else None),
            limits=settings.limits if settings.limits is not None else (previous.limits if previous else None),
        )
        try:
            with self._writing():
                row = [name, *dataclasses.astuple(version)]
                self._db.execute(
                    f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
                    row,
                )
                self._put(function)
        except SjobError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return function, version

    def set_current(self, name: str, version: int, now_usec: int) -> None:
        with self._writing():
            self._db.execute(
                "UPDATE functions SET current = ?, updated_usec = ? WHERE name = ?", [version, now_usec, name]
            )

    def remove(self, name: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM versions WHERE name = ?", [name])
            self._db.execute("DELETE FROM functions WHERE name = ?", [name])
        shutil.rmtree(self.root / name, ignore_errors=True)

    # --- plumbing --------------------------------------------------------------------------------------------

    def _put(self, function: Function) -> None:
        values = [
            function.name,
            function.owner,
            function.owner_uid,
            function.description,
            json.dumps(function.allow),
            json.dumps(to_wire(function.limits)) if function.limits else None,
            function.concurrency,
            function.version,
            function.latest,
            function.created_usec,
            function.updated_usec,
        ]
        self._db.execute(
            f"INSERT OR REPLACE INTO functions ({_FUNCTION_COLUMNS}) VALUES ({', '.join('?' * len(values))})",  # noqa: S608
            values,
        )

    def _writing(self) -> AbstractContextManager[None]:
        return writing(self._db, self._path, "functions")

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise _storage_error(self.root, e) from None


_FUNCTION_COLUMNS = (
    "name, owner, owner_uid, description, allow, limits, concurrency, current, latest, created_usec, updated_usec"
)
_VERSION_COLUMNS = "name, version, created_usec, deployed_by, sha256, size, requirements, build_job"


def _version(row: tuple[object, ...]) -> FunctionVersion:
    _, version, created, deployed_by, sha256, size, requirements, build_job = row
    return FunctionVersion(
        int(str(version)),
        int(str(created)),
        str(deployed_by),
        str(sha256),
        int(str(size)),
        bool(requirements),
        str(build_job),
    )


def _function(row: tuple[object, ...]) -> Function:
    name, owner, owner_uid, description, allow, limits, concurrency, current, latest, created, updated = row
    return Function(
        name=str(name),
        owner=str(owner),
        owner_uid=int(str(owner_uid)),
        version=int(str(current)),
        latest=int(str(latest)),
        created_usec=int(str(created)),
        updated_usec=int(str(updated)),
        allow=list(json.loads(str(allow))),
        concurrency=int(str(concurrency)),
        description=None if description is None else str(description),
        limits=None if limits is None else from_wire(Limits, json.loads(str(limits))),
    )


def _storage_error(path: Path, e: Exception) -> SjobError:
    return SjobError(
        ErrorCode.StorageError,
        f"sjobd cannot write functions in {path}: {e}",
        hint=f"free space on the file system of {path} (df -h {path})",
    )


class UntrustedBuildError(SjobError):
    """What a build left cannot be taken as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(
            ErrorCode.BuildFailed, message, hint="a build may leave only files, directories and links, readable"
        )


MAX_ENTRIES = 200_000  # files, directories and links a build may leave
MAX_BYTES = 4 << 30  # and bytes in its files
MAX_DEPTH = 64


def copy_built(out: Path, into: Path, names: tuple[str, ...]) -> None:
    """Copy the entries `names` of a build's output directory `out` into the new directory `into`, as root's files
    (see the module's docstring). Raises UntrustedBuildError for what may not be taken."""
    budget = [MAX_ENTRIES, MAX_BYTES]
    source = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    target = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in os.listdir(source):
            if name in names:
                _copy_entry(source, target, name, f"{out}/{name}", budget, 0)
    except PermissionError as e:
        raise UntrustedBuildError(f"the build left {e.filename or 'a file'} unreadable") from None
    finally:
        os.close(source)
        os.close(target)


def _copy_entry(source: int, target: int, name: str, where: str, budget: list[int], depth: int) -> None:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise UntrustedBuildError(f"the build left more than {MAX_ENTRIES} entries, or nested deeper than {MAX_DEPTH}")
    info = os.lstat(name, dir_fd=source)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(name, dir_fd=source), name, dir_fd=target)
    elif stat.S_ISDIR(info.st_mode):
        os.mkdir(name, 0o700, dir_fd=target)
        os.chmod(name, 0o755, dir_fd=target)  # noqa: S103 - a version is for everyone to read; sjobd has umask 077
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source)
        copy = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=target)
        try:
            for entry in os.listdir(child):
                _copy_entry(child, copy, entry, f"{where}/{entry}", budget, depth + 1)
        finally:
            os.close(child)
            os.close(copy)
    elif stat.S_ISREG(info.st_mode):
        _copy_file(source, target, name, where, budget)
    else:
        raise UntrustedBuildError(f"the build left a special file, {where}")


def _copy_file(source: int, target: int, name: str, where: str, budget: list[int]) -> None:
    try:
        reading = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=source)
    except BlockingIOError:
        raise UntrustedBuildError(f"the build holds a lease on {where}") from None
    try:
        info = os.fstat(reading)
        if not stat.S_ISREG(info.st_mode):  # replaced since lstat
            raise UntrustedBuildError(f"the build left a special file, {where}")
        budget[1] -= info.st_size
        if budget[1] < 0:
            raise UntrustedBuildError(f"the build left more than {MAX_BYTES >> 30} GiB")
        mode = 0o755 if info.st_mode & 0o111 else 0o644
        writing = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=target
        )
        try:
            offset = 0
            while sent := os.sendfile(writing, reading, offset, 1 << 24):
                offset += sent
            os.fchmod(writing, mode)  # umask
        finally:
            os.close(writing)
    finally:
        os.close(reading)
