"""The ledger: how a job's end gets into its record. It applies an outcome to a job's record (`finish`), an exit
record from the journal (`record_exit`, the authority on how a job ended), and the record of a job systemd runs but
sjobd had lost (`adopt`); and it keeps the grace a unit that ended or vanished without an exit record gets before
its job is settled without one. It works on the record store and asks the job log only for a quota record.

A retried job (issue J) has an exit record for each attempt, each from its own run of the unit: the ledger adds
each attempt to the record once (by its run's invocation id, whichever reader brings it first), and only the
attempt systemd starts no other after (`retries.is_final`) ends the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from supervisor import retries
from supervisor.backends import JobLog, RecordStore
from supervisor.logformat import ExitRecord
from supervisor.protocol import Job, JobState, Resources
from supervisor.units import Outcome, UnitState, outcome_of_exit, outcome_of_unit, over_quota

log = logging.getLogger(__name__)

# How long a unit may be gone from systemd without an exit record before we call the job's end unknown. The exit
# record is written just before the unit is collected, so it can trail the unit's disappearance a little.
VANISHED_GRACE_USEC = 10 * 1_000_000


def now_usec() -> int:
    return time.time_ns() // 1000


def _monotonic_usec() -> int:
    return time.monotonic_ns() // 1000


class Ledger:
    def __init__(self, records: RecordStore, journal: JobLog) -> None:
        self._records = records
        self._journal = journal
        # job id -> when its unit was first seen ended or gone without an exit record (CLOCK_MONOTONIC, usec: a step
        # of the realtime clock must not stretch or skip the grace)
        self._vanished: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future[Job]]] = {}  # job id -> those awaiting its end (`ended`)
        self._listeners: list[Callable[[Job], None]] = []  # told of every job's end (`on_end`)
        self._attempt_listeners: list[Callable[[Job], None]] = []  # told of each attempt after which another comes

    def finish(self, job: Job, outcome: Outcome, when: int, resources: Resources | None = None) -> Job:
        # An exit record that only adds what the job used to an end already recorded (its main process exited: the
        # answer `sjob run` waits for) is not another end: one "ended" line per job in sjobd's log, not two alike.
        recorded = (job.state, job.result, job.exit_status, job.signal, job.message)
        again = job.state.finished and recorded == dataclasses.astuple(outcome)
        job = dataclasses.replace(
            job,
            state=outcome.state,
            ended_usec=when,
            result=outcome.result,
            exit_status=outcome.exit_status,
            signal=outcome.signal,
            message=outcome.message,
            resources=resources,
        )
        self._records.update(job)
        self._vanished.pop(job.id, None)
        if again:
            log.debug("%s: its exit record adds what it used", job.unit)
        else:
            log.info("%s ended: %s", job.unit, outcome)
        for waiter in self._waiting.pop(job.id, []):
            if not waiter.done():
                waiter.set_result(job)
        for listener in self._listeners:
            listener(job)
        return job

    async def ended(self, job_id: str) -> Job:
        """The job once its end is recorded (at once if it already is): an event, not a poll."""
        job = self._records.get(job_id)
        if job is not None and job.state.finished:
            return job
        waiter: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(waiter)
        try:
            return await waiter
        finally:
            if not waiter.done() and waiter in (waiting := self._waiting.get(job_id, [])):
                waiting.remove(waiter)
                if not waiting:
                    self._waiting.pop(job_id, None)

    def on_end(self, listener: Callable[[Job], None]) -> None:
        """Call `listener` with every job whose end is recorded (also again, when an exit record corrects it)."""
        self._listeners.append(listener)

    def on_attempt(self, listener: Callable[[Job], None]) -> None:
        """Call `listener` with a retried job each time one of its attempts has ended and systemd is to start
        another (once per attempt)."""
        self._attempt_listeners.append(listener)

    def record_exit(self, job_id: str, record: ExitRecord) -> Job | None:
        """Apply a job's exit record. It is the authority on how the job ended: it overrides an earlier
        provisional outcome (from Reaper.main_exited, or "unknown") where that differs."""
        job = self._records.get(job_id)
        if job is None:
            return None
        if job.retry is not None:
            if (attempted := self._record_attempt(job, record)) is not None:
                return attempted
            job = self._records.get(job_id) or job
        outcome = outcome_of_exit(record, job.stopped_by)
        if job.state.finished and (job.state, job.result, job.exit_status, job.signal, job.resources) == (
            outcome.state,
            outcome.result,
            outcome.exit_status,
            outcome.signal,
            record.resources,
        ):
            return job
        # Only now, once the record changes the job: the lookup opens a journal reader, and the same exit record
        # reaches this method from the watcher, every follower and the reaper's looks. It changes only the message.
        outcome = self._with_quota(job, outcome, record.invocation or job.invocation)
        return self.finish(job, outcome, record.when_usec or now_usec(), record.resources or job.resources)

    def finish_unreported(self, job: Job, unit: UnitState) -> Job:
        """End a job whose exit record never came as its settled unit's properties say (units.outcome_of_unit)."""
        outcome = self._with_quota(job, outcome_of_unit(unit, job.stopped_by), unit.invocation_id or job.invocation)
        return self.finish(job, outcome, unit.exec_main_exit_usec or now_usec())

    def _with_quota(self, job: Job, outcome: Outcome, run: str | None) -> Outcome:
        """The outcome, saying so if the job's output reached the policy's quota (the forwarder's quota record)."""
        if (quota := self._journal.find_quota(job.log_id, job.unit, job.log_uid, run)) is not None:
            return over_quota(outcome, quota)
        return outcome

    def _record_attempt(self, job: Job, record: ExitRecord) -> Job | None:
        """Add an attempt of a retried job to its record: the job as it stands if the job goes on (another attempt
        follows) or this attempt was recorded before; None if it is the last, whose outcome is then the job's. An
        exit record without a run's id (the service manager's log, for a lost report) ends the job."""
        retry = job.retry
        if retry is None:
            return None
        if not record.invocation:
            return job if job.state.finished else None
        attempts = list(job.attempts or [])
        attempt = next((a for a in attempts if a.invocation == record.invocation), None)
        new = attempt is None
        if attempt is None:
            attempt = retries.attempt_of(record, len(attempts) + 1)
            job = dataclasses.replace(job, attempts=[*attempts, attempt])
            self._records.update(job)
            log.info("%s: attempt %d ended (%s)", job.unit, attempt.number, record.result)
        elif job.state.finished:
            return job
        last = attempt.number == len(job.attempts or [])
        if last and retries.is_final(retry, attempt.number, record.result, job.stopped_by is not None):
            return None
        if new:
            for listener in self._attempt_listeners:
                listener(job)
        return job

    def adopt(self, job_id: str, unit: UnitState) -> None:
        # What systemd still knows; the shim's argv is `sjob-shim [--check=...] ID -- COMMAND...`.
        argv = list(unit.exec_start_argv)
        command = argv[argv.index("--") + 1 :] if "--" in argv else argv
        job = Job(
            id=job_id,
            unit=unit.name,
            state=JobState.running,
            uid=int(unit.user) if unit.user.isdigit() else -1,
            user=unit.user or "?",
            argv=command,
            cwd=unit.working_directory,
            created_usec=unit.exec_main_start_usec or now_usec(),
            started_usec=unit.exec_main_start_usec or None,
            message="adopted: sjobd had no record of this job",
        )
        log.warning("%s: adopting a job sjobd had no record of", unit.name)
        self._records.insert(job)

    def exit_record_may_still_come(self, job: Job) -> bool:
        """Whether the job's exit record may yet arrive: for VANISHED_GRACE_USEC after its unit was first seen
        ended (or gone) without one."""
        first_seen = self._vanished.setdefault(job.id, _monotonic_usec())
        return _monotonic_usec() - first_seen < VANISHED_GRACE_USEC

    def grace_left(self, job: Job) -> float | None:
        """Seconds left of the job's grace for its exit record (`exit_record_may_still_come`), 0 once it is over;
        None if its unit has not been seen ended or gone (or was seen running since)."""
        first_seen = self._vanished.get(job.id)
        return None if first_seen is None else max(0.0, (first_seen + VANISHED_GRACE_USEC - _monotonic_usec()) / 1e6)

    def unit_seen(self, job_id: str) -> None:
        """The job's unit is there and running: should it vanish later, its grace starts then."""
        self._vanished.pop(job_id, None)
