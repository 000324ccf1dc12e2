"""sjobd's orchestration wired over the fakes, for the host tests of scheduling (issue J): the job service with its
queue, the timers, the reaper and its watchers, on job records in a temp dir. A test can build it again over the
same records, as a restarted sjobd would find them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import typing
from collections.abc import AsyncIterator
from pathlib import Path

from supervisor.access import Access, Account
from supervisor.auth import Principal
from supervisor.jobs import JobService
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger
from supervisor.policy import Rule
from supervisor.properties import ShimCommand
from supervisor.protocol import AttemptStart, Chunk, Job, JobState
from supervisor.queue import JobQueue
from supervisor.reaper import Reaper
from supervisor.records import JobRecords
from supervisor.timers import TimerService
from supervisor.tokens import Keys, TokenStore

from .fakes import FakeAudit, FakeJobLog, FakeUnits, shipped_access

ALICE = Principal(1000, 1000, 10, "alice", frozenset({"alice", "staff"}))
BOB = Principal(1001, 1001, 11, "bob", frozenset({"bob"}))


def accounts() -> dict[str, Account]:
    """The users passwd and group know of, as `Access.current` looks them up (a test may change them)."""
    return {
        "alice": Account(1000, 1000, frozenset({"alice", "staff"})),
        "bob": Account(1001, 1001, frozenset({"bob"})),
        "ci": Account(1500, 1500, frozenset({"ci"})),
    }


@dataclasses.dataclass
class World:
    jobs: JobService
    timers: TimerService
    queue: JobQueue
    reaper: Reaper
    units: FakeUnits
    log: FakeJobLog
    records: JobRecords
    access: Access
    audit: FakeAudit
    users: dict[str, Account]

    def rules(self, **changes: typing.Any) -> None:
        """Change every rule of the policy in force (a reload)."""
        policy = self.access.policy
        rules = tuple(dataclasses.replace(rule, **changes) for rule in policy.rules)
        self.jobs.set_policy(dataclasses.replace(policy, rules=rules), self.jobs.profiles)

    async def until(self, job_id: str, *states: JobState, timeout: float = 10) -> Job:
        """The job once it is in one of `states` (as its record says)."""
        async with asyncio.timeout(timeout):
            while (job := self.records.get(job_id)) is None or job.state not in states:
                await asyncio.sleep(0.01)
        return job

    async def output(self, principal: Principal, job_id: str, after_seq: int = 0) -> tuple[bytes, list[int], Job]:
        """What the job wrote (stdout and stderr together), the attempts whose starts were marked, and its end."""
        data, attempts, final = b"", [], None
        async for item in self.jobs.follow(principal, job_id, after_seq=after_seq):
            if isinstance(item, Chunk):
                data += item.data
            elif isinstance(item, AttemptStart):
                attempts.append(item.attempt)
            else:
                final = item
        assert final is not None
        return data, attempts, final


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path, log: FakeJobLog | None = None, units: FakeUnits | None = None, **rule: typing.Any
) -> AsyncIterator[World]:
    """The world, its rules changed by `rule` (max_jobs=2, ...); with `log` and `units`, the journal and the systemd
    of an earlier one."""
    log = log or FakeJobLog()
    units = units or FakeUnits(log)
    records = JobRecords(tmp_path / "jobs.sqlite")
    audit = FakeAudit()
    users = accounts()
    if not (tmp_path / "keys").exists():
        Keys.create(tmp_path / "keys")
    tokens = TokenStore(tmp_path / "tokens.sqlite")
    access, profiles = shipped_access(audit, lookup=users.get, keys=Keys(tmp_path / "keys"), tokens=tokens)
    access.policy = dataclasses.replace(
        access.policy, rules=tuple(dataclasses.replace(r, **rule) for r in access.policy.rules)
    )
    ledger = Ledger(records, log)
    reaper = Reaper(units, log, records, ledger, lambda: access.policy.retention)
    shim = ShimCommand("/opt/sjob/bin/sjob-shim")
    launcher = Launcher(units, records, ledger, reaper, lambda: access.policy, shim)
    queue = JobQueue(records, ledger, launcher, access)
    jobs = JobService(units, log, records, ledger, reaper, launcher, access, profiles, queue)
    timers = TimerService(units, log, records, ledger, launcher, jobs, shim, access, reaper)
    await reaper.reconcile()
    await timers.reconcile()
    queue.resume()
    watchers = [asyncio.create_task(reaper.watch_exits()), asyncio.create_task(timers.watch_runs())]
    try:
        yield World(jobs, timers, queue, reaper, units, log, records, access, audit, users)
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await queue.close()
        await reaper.close()
        await units.close()
        records.close()
        tokens.close()


def rule_named(world: World, name: str) -> Rule:
    return next(r for r in world.access.policy.rules if r.name == name)
