"""A real sjobd server (supervisor.server.Server) on a temp socket, in a thread of its own, with the fakes of
`fakes` behind JobService and its reaper. Tests talk to it with the real client or the real CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
from pathlib import Path
from typing import Any

from supervisor.daemon import listening_socket
from supervisor.fnstore import FunctionStore
from supervisor.functions import FunctionService
from supervisor.jobs import JobService
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger
from supervisor.properties import ShimCommand
from supervisor.queue import JobQueue
from supervisor.reaper import Reaper
from supervisor.records import JobRecords
from supervisor.server import Server
from supervisor.timers import TimerService

from .fakes import FakeAudit, FakeJobLog, FakeUnits, shipped_access


class ServerThread:
    def __init__(self, directory: Path, access: dict[str, Any] | None = None, **units: Any) -> None:
        self.socket = str(directory / "sjob.sock")
        self.db = directory / "jobs.sqlite"
        self._units_args = units
        self._access_args = access or {}
        self.audit = FakeAudit()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self.log = FakeJobLog()
        self.units = FakeUnits(self.log, **self._units_args)
        records = JobRecords(self.db)
        self.access, profiles = shipped_access(self.audit, **self._access_args)
        ledger = Ledger(records, self.log)
        reaper = Reaper(self.units, self.log, records, ledger, lambda: self.access.policy.retention)
        shim = ShimCommand("/opt/sjob/bin/sjob-shim")
        launcher = Launcher(self.units, records, ledger, reaper, lambda: self.access.policy, shim)
        queue = JobQueue(records, ledger, launcher, self.access)
        self.service = JobService(self.units, self.log, records, ledger, reaper, launcher, self.access, profiles, queue)
        self.timers = TimerService(
            self.units, self.log, records, ledger, launcher, self.service, shim, self.access, reaper
        )
        # Functions with this test's own Python standing for the runtime (fakes run builds and calls locally).
        self.access.policy = dataclasses.replace(
            self.access.policy, functions=dataclasses.replace(self.access.policy.functions, runtime=sys.prefix)
        )
        store = FunctionStore(self.db.parent / "state")
        self.functions = FunctionService(
            store, self.units, self.log, records, ledger, launcher, shim, self.access, lambda: profiles
        )
        self.server = Server(
            self.service, self.access, listening_socket(self.socket), self.functions, timers=self.timers
        )
        self.server.start()
        self._stop = asyncio.Event()
        watcher = asyncio.create_task(reaper.watch_exits())
        runs = asyncio.create_task(self.timers.watch_runs())
        self._ready.set()
        await self._stop.wait()
        await self.server.close(2)
        watcher.cancel()
        runs.cancel()
        await asyncio.gather(watcher, runs, return_exceptions=True)
        await queue.close()
        await self.units.close()
        await reaper.close()
        records.close()
        store.close()

    def call(self, fn: Any) -> Any:
        """Run `fn()` on the server's loop and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
