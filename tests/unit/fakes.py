"""Hand-written fakes behind the Protocols of supervisor.jobs, for host tests without systemd or journald.

`FakeUnits` "starts" a unit by running its command locally (as the test user) and feeding its output and exit
into a `FakeJobLog`, the way the shim and ExecStopPost feed journald; `start_result` and `states` let a test script
systemd's answers instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from collections.abc import AsyncIterator

from supervisor.logformat import ExitRecord, OutputRecord, Record
from supervisor.properties import UnitProperties
from supervisor.units import UnitState


class FakeJobLog:
    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = {}
        self.exit_queue: asyncio.Queue[tuple[str, ExitRecord]] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.open_readers = 0

    def add(self, job_id: str, record: Record) -> None:
        self.records.setdefault(job_id, []).append(record)
        if isinstance(record, ExitRecord):
            self.exit_queue.put_nowait((job_id, record))
        self.changed.set()

    async def job_records(
        self, job_id: str, unit: str, owner_uid: int, *, follow: bool
    ) -> AsyncIterator[Record | None]:
        self.open_readers += 1
        try:
            seen = 0
            while True:
                records = self.records.get(job_id, [])
                while seen < len(records):
                    seen += 1
                    yield records[seen - 1]
                if not follow:
                    return
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.2)
                except TimeoutError:
                    yield None
        finally:
            self.open_readers -= 1

    async def exits(self, since_usec: int) -> AsyncIterator[tuple[str, ExitRecord]]:
        while True:
            yield await self.exit_queue.get()

    def find_exit(self, job_id: str) -> ExitRecord | None:
        return next((r for r in self.records.get(job_id, []) if isinstance(r, ExitRecord)), None)


@dataclasses.dataclass
class FakeUnits:
    log: FakeJobLog
    start_result: str = "done"
    run_commands: bool = True
    started: list[UnitProperties] = dataclasses.field(default_factory=list)
    states: dict[str, UnitState] = dataclasses.field(default_factory=dict)
    reset: list[str] = dataclasses.field(default_factory=list)
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    async def start_transient(self, unit: UnitProperties) -> str:
        self.started.append(unit)
        if self.start_result == "done" and self.run_commands:
            task = asyncio.create_task(self._run(unit))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return self.start_result

    async def _run(self, unit: UnitProperties) -> None:
        _, argv, _ = exec_entry(unit)
        job_id, command = argv[1], argv[3:]
        cwd = str(unit.get("WorkingDirectory"))
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd
        )
        seq = 0

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            nonlocal seq
            while chunk := await stream.read(65536):
                seq += 1
                self.log.add(job_id, OutputRecord(seq, name, chunk))

        assert proc.stdout is not None
        assert proc.stderr is not None
        await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        status = await proc.wait()
        if status >= 0:
            record = ExitRecord("success" if status == 0 else "exit-code", "exited", status)
        else:
            record = ExitRecord("signal", "killed", -status)
        self.log.add(job_id, record)

    async def unit_state(self, name: str) -> UnitState | None:
        return self.states.get(name)

    async def reset_failed(self, name: str) -> None:
        self.reset.append(name)
        self.states.pop(name, None)


def exec_entry(unit: UnitProperties, key: str = "ExecStartEx") -> tuple[str, list[str], list[str]]:
    """The (path, argv, flags) of a unit's single ExecStartEx= / ExecStopPostEx= entry."""
    ((path, argv, flags),) = typing.cast(list[tuple[str, list[str], list[str]]], unit.get(key))
    return path, argv, flags


def failed_unit(name: str, code: int, status: int, result: str, active: str = "failed") -> UnitState:
    return UnitState(name, "loaded", active, "failed", result, 0, code, status, 0, 0, "1000")
