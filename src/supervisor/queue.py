"""The per-user queue (`sjob run --queue`, issue J): jobs that wait for one of their owner's running jobs to end
instead of being refused at the policy's max_jobs.

- A queued job is a job record in state `queued` whose `pending` column holds what starting it takes (`Pending`:
  the validated spec and the principal who asked). One row, written at once: the queue outlives sjobd being
  restarted or killed, and `sjob list`/`status` show queued jobs like any job, with their place in the queue.
- First come, first served, per user (the uid the jobs run as): whenever a job of theirs ends (the ledger's
  `on_end`, an event, never a poll), and when sjobd starts or reloads its policy, the queue starts their oldest
  queued jobs while they run fewer than their rule's max_jobs.
- A queued job was checked against the policy when it was queued (JobService.start) and is checked again when it
  starts, as its owner is then (`Access.current`: their groups now, their token still good and mapped to them),
  since the policy, the groups or a token may have changed meanwhile: a job no longer allowed ends failed, and says
  why. Both are audited: `queue` when it is queued, `run` when it starts.
- A queued job reads nothing: no caller's stdin or terminal could outlive a restart of sjobd.
- Stopping a queued job removes it from the queue (it ends stopped, never having run); following one waits for
  its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable

from supervisor import jobspec
from supervisor.access import Access
from supervisor.auth import Principal, principal_from_wire, principal_to_wire
from supervisor.backends import RecordStore
from supervisor.errors import ErrorCode, SjobError
from supervisor.launcher import Admission, Launcher
from supervisor.ledger import Ledger, now_usec
from supervisor.policy import Action, rule_for
from supervisor.properties import JobStdio
from supervisor.protocol import REMOVED_FROM_QUEUE, Job, JobSpec, JobState, from_wire, to_wire
from supervisor.units import Outcome

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """What starting a queued job takes: its validated spec, and who asked (as the kernel or a token said then)."""

    spec: JobSpec
    principal: Principal

    def to_json(self) -> str:
        return json.dumps({"spec": to_wire(self.spec), "principal": principal_to_wire(self.principal)})

    @classmethod
    def from_json(cls, text: str) -> Pending:
        data = json.loads(text)
        return cls(from_wire(JobSpec, data["spec"]), principal_from_wire(data["principal"]))


Admit = Callable[[Principal, JobSpec, str | None], Admission]


class JobQueue:
    def __init__(self, records: RecordStore, ledger: Ledger, launcher: Launcher, access: Access) -> None:
        self._records = records
        self._ledger = ledger
        self._launcher = launcher
        self._access = access  # and its policy in force at each admission: a reload applies to the next
        self._admit: Admit | None = None
        self._locks: dict[int, asyncio.Lock] = {}  # uid -> one admission round at a time
        self._leaving: dict[str, list[asyncio.Future[Job]]] = {}  # job id -> followers waiting for its start
        self._tasks: set[asyncio.Task[None]] = set()
        ledger.on_end(self._ended)

    def bind(self, admit: Admit) -> None:
        """How a job spec is checked against the policy (JobService.admit): again when a queued job starts."""
        self._admit = admit

    def add(self, principal: Principal, spec: JobSpec, admission: Admission) -> Job:
        """Put an admitted job in its owner's queue (policy action `queue`, at most the rule's max_queued waiting),
        or refuse it (audited)."""
        rule = admission.rule
        decision = self._access.decide(principal, Action.queue)
        waiting = len(self._records.queued(principal.uid))
        if not decision.allowed:
            why, hint = f"{principal.name} may not queue jobs: {decision.reason}", "wait for one of your jobs to end"
        elif waiting >= rule.max_queued:
            why = f"your queue is full: {waiting} jobs wait; policy rule {rule.name!r} allows at most {rule.max_queued}"
            hint = "wait for some to start, or stop queued ones ('sjob list --running')"
        else:
            job = self._launcher.job_of(principal, spec, admission, JobState.queued)
            try:
                self._launcher.record(job, Pending(spec, principal).to_json())
            except SjobError as e:
                raise self._access.refuse(principal, Action.queue, e) from None
            self._access.allow(principal, Action.queue, f"{decision.reason}, place {waiting + 1}", job.id)
            log.info("%s: queued for %s at place %d", job.unit, principal, waiting + 1)
            return dataclasses.replace(job, position=waiting + 1)
        raise self._access.refuse(principal, Action.queue, SjobError(ErrorCode.TooManyJobs, why, hint=hint))

    def positions(self, uid: int | None = None) -> dict[str, int]:
        """Queued job id -> its place in its owner's queue (1: next to start)."""
        places: dict[int, int] = {}
        found = {}
        for job, _ in self._records.queued(uid):
            places[job.uid] = places.get(job.uid, 0) + 1
            found[job.id] = places[job.uid]
        return found

    def placed(self, job: Job) -> Job:
        """The job with its place in the queue, if it is queued."""
        if job.state is not JobState.queued:
            return job
        return dataclasses.replace(job, position=self.positions(job.uid).get(job.id))

    def remove(self, job: Job, by: str) -> Job:
        """Take a queued job out of the queue: it ends stopped, never having run."""
        log.info("%s: removed from the queue by %s", job.unit, by)
        job = dataclasses.replace(job, stopped_by=by)
        return self._ledger_finish(
            job, Outcome(JobState.stopped, REMOVED_FROM_QUEUE, None, None, f"removed from the queue by {by}")
        )

    async def left(self, job_id: str) -> Job | None:
        """The job once it has left the queue (started, refused or removed); at once if it is not queued."""
        job = self._records.get(job_id)
        if job is None or job.state is not JobState.queued:
            return job
        waiter: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._leaving.setdefault(job_id, []).append(waiter)
        try:
            return await waiter
        finally:
            if not waiter.done() and waiter in (waiting := self._leaving.get(job_id, [])):
                waiting.remove(waiter)
                if not waiting:
                    self._leaving.pop(job_id, None)

    def resume(self) -> None:
        """Start what every user's queue may start now (at sjobd's start, after a policy reload)."""
        for uid in {job.uid for job, _ in self._records.queued()}:
            self._next_later(uid)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _ended(self, job: Job) -> None:
        self._left(job)
        if job.state.finished:
            self._next_later(job.uid)

    def _left(self, job: Job) -> None:
        for waiter in self._leaving.pop(job.id, []):
            if not waiter.done():
                waiter.set_result(job)

    def _next_later(self, uid: int) -> None:
        task = asyncio.create_task(self._next(uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _next(self, uid: int) -> None:
        """Start `uid`'s oldest queued jobs while they have free slots; one round per user at a time, so two ends
        at once cannot start one job twice or overshoot max_jobs."""
        async with self._locks.setdefault(uid, asyncio.Lock()):
            while queued := self._records.queued(uid):
                job, raw = queued[0]
                try:
                    pending = Pending.from_json(raw)
                except (ValueError, KeyError, TypeError, SjobError) as e:  # a record sjobd cannot have written
                    self._ledger_finish(job, Outcome(JobState.failed, "resources", None, None, f"not started: {e}"))
                    continue
                try:
                    # Who asked, as they are now (review of J): a token revoked, expired or mapped elsewhere since,
                    # a user gone or out of a group since, starts nothing on the rights of the moment of queueing;
                    # and their rule now says how many may run (a rule of a group they left no longer counts).
                    principal = self._access.current(pending.principal, Action.run, now_usec(), job.id)
                except SjobError as e:
                    self._refused(job, e)
                    continue
                except Exception:  # passwd/group (NSS) or the token store failing: not a refusal; the next end retries
                    log.exception("%s: cannot tell who queued it as they are now; it waits", job.unit)
                    return
                rule = rule_for(self._access.policy, principal)
                running = len(self._records.unfinished(uid))
                if rule is not None and rule.max_jobs == 0:  # a reload made it so: it would wait for ever
                    why = f"policy rule {rule.name!r} allows no running jobs (max_jobs = 0)"
                    self._refused(
                        job, self._access.refuse(principal, Action.run, SjobError(ErrorCode.TooManyJobs, why), job.id)
                    )
                    continue
                if rule is not None and rule.max_jobs is not None and running >= rule.max_jobs:
                    return
                try:
                    await self._start(job, pending.spec, principal)  # it leaves the queue: started or refused
                except Exception:  # one job's trouble must not stall the queue behind it
                    log.exception("%s: starting it from the queue failed", job.unit)
                current = self._records.get(job.id)
                if current is not None and current.state is JobState.queued:
                    current = self._ledger_finish(
                        current, Outcome(JobState.failed, "resources", None, None, "not started")
                    )
                if current is not None:
                    self._left(current)

    def _refused(self, job: Job, error: SjobError) -> None:
        why = f"not started from the queue: {error.message}"
        self._ledger_finish(job, Outcome(JobState.failed, "refused", None, None, why))

    async def _start(self, job: Job, spec: JobSpec, principal: Principal) -> None:
        """Start a job from the queue as `principal` (as they are now), once more checked against the policy as it
        is now; a job the policy no longer allows ends failed, saying why (audited)."""
        if self._admit is None:
            raise RuntimeError("JobQueue.bind was not called")  # a bug in sjobd's wiring
        try:
            spec = jobspec.validate(spec)
        except SjobError as e:
            self._refused(job, self._access.refuse(principal, Action.run, e, job.id))
            return
        try:
            admission = self._admit(principal, spec, job.id)
        except SjobError as e:
            self._refused(job, e)
            return
        job = dataclasses.replace(job, state=JobState.starting, limits=admission.limits, profile=admission.profile.name)
        self._records.update(job)  # a slot taken: it counts as running from now on
        self._access.allow(principal, Action.run, admission.reason(spec) + ", from the queue", job.id)
        with contextlib.suppress(SjobError):  # StartFailed: the launcher has recorded why
            await self._launcher.start_spec(principal, spec, job, admission, JobStdio())

    def _ledger_finish(self, job: Job, outcome: Outcome) -> Job:
        return self._ledger.finish(job, outcome, now_usec())
