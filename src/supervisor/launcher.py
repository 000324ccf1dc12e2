"""Starting a job that is ready to start: its record, its user's slice, its transient unit, and what became of the
start. The requests that make jobs (jobs.py for `sjob run`, queue.py when a queued job's turn comes, functions.py
for a function's builds and calls) decide who may start what and with which properties (an `Admission`, for a job
spec); this is where the job comes into being, the same way for all.

1. The record is written first (state starting), so a job never runs without one; a full disk refuses the start
   here, before any unit exists.
2. The user's slice gets the policy's caps on all their jobs together.
3. StartTransientUnit, then systemd's start job: "done" means the shim was executed (state running); anything else
   means the unit failed before the command ran, and the error says why (e.g. the working directory is missing).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable

from supervisor import properties
from supervisor.auth import Principal
from supervisor.backends import RecordStore, UnitManager
from supervisor.errors import ErrorCode, NoAnswerError, SjobError
from supervisor.ledger import Ledger, now_usec
from supervisor.policy import Decision, Policy, Rule
from supervisor.profiles import Profile
from supervisor.properties import JobStdio, ShimCommand, UnitProperties
from supervisor.protocol import Job, JobSpec, JobState, Limits, unit_for
from supervisor.reaper import UNANSWERED, Reaper
from supervisor.units import CLD_EXITED, Outcome, UnitState, outcome_of_unit, setup_failure_hint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """A job spec the policy allows (JobService.admit): under which rule, with which profile and limits."""

    decision: Decision
    rule: Rule
    profile: Profile
    limits: Limits

    def reason(self, spec: JobSpec) -> str:
        """Why it is allowed, for the audit entry."""
        retried = f", retried up to {spec.retry.count} times" if spec.retry is not None else ""
        return f"{self.decision.reason}, profile {self.profile.name}{retried}"


def ran(state: UnitState) -> bool:
    """Whether the unit's command ran and exited by itself, with a status of its own: not systemd's for a setup
    that failed (200 and up) nor the shim's for a command it could not run or refused to (125 to 127)."""
    if not state.exec_main_start_usec or state.exec_main_code != CLD_EXITED:
        return False
    return state.exec_main_status < 125 or 128 <= state.exec_main_status < 200


class Launcher:
    def __init__(
        self,
        units: UnitManager,
        records: RecordStore,
        ledger: Ledger,
        reaper: Reaper,
        policy: Callable[[], Policy],
        shim: ShimCommand,
    ) -> None:
        self._units = units
        self._records = records
        self._ledger = ledger
        self._reaper = reaper
        self._policy = policy  # the policy in force at each start: a reload applies to the next
        self._shim = shim
        self._slices: dict[int, UnitProperties] = {}  # user -> what their slice was last given

    def new_id(self) -> str:
        """An id no job or timer has."""
        while True:
            job_id = secrets.token_hex(4)
            if not self._records.id_taken(job_id):
                return job_id

    def job_of(
        self,
        principal: Principal,
        spec: JobSpec,
        admission: Admission,
        state: JobState,
        stdio: JobStdio = JobStdio(),  # noqa: B008
    ) -> Job:
        """A new job (not yet recorded) running `spec` as `principal`, as admitted."""
        job_id = self.new_id()
        return Job(
            id=job_id,
            unit=unit_for(job_id),
            state=state,
            uid=principal.uid,
            user=principal.name,
            argv=spec.argv,
            cwd=spec.cwd,
            created_usec=now_usec(),
            limits=admission.limits,
            profile=admission.profile.name,
            input=stdio.input,
            retry=spec.retry,
            token_id=principal.token.token_id if principal.token is not None else None,
        )

    async def start_spec(
        self, principal: Principal, spec: JobSpec, job: Job, admission: Admission, stdio: JobStdio
    ) -> Job:
        """Start the recorded `job` as the unit `spec` becomes (properties.job_unit), as `start` does."""
        uid, gid = principal.uid, principal.gid  # a token's principal is already the local user it maps to
        output = self._policy().output
        limits, profile = admission.limits, admission.profile
        unit = properties.job_unit(
            job.unit, job.id, spec, principal, uid, gid, self._shim, limits, profile, output, stdio
        )
        return await self.start(job, unit)

    def record(self, job: Job, pending: str | None = None) -> None:
        """Write the new job's record, dropping the owner's oldest per the retention (StorageError on a full
        disk: nothing has been started yet); a queued job's with what starting it later takes (`pending`)."""
        self._records.insert(job, self._policy().retention, pending)

    async def start(self, job: Job, unit: UnitProperties, slice_owner: int | None = None) -> Job:
        """Start the recorded `job` as `unit`, in the slice of `slice_owner` (the job's owner by default); the job as
        it runs, or StartFailed once its record says why it could not start."""
        owner = job.uid if slice_owner is None else slice_owner
        log.info("starting %s for %s: %s", job.unit, job.user, job.argv)
        asked = False  # whether systemd was asked to start it
        try:
            with self._reaper.starting(job.id):
                await self.cap_slice(owner)
                asked = True
                result = await self._units.start_transient(unit)
        except SjobError as e:
            # systemd may start it yet, when it did not answer the start: a job recorded as failed must not run. Its
            # unit is stopped, by sjobd as its record says, should its exit record come after all (review of H).
            unanswered = asked and isinstance(e, NoAnswerError)
            self._failed(
                job, Outcome(JobState.failed, "resources", None, None, e.message), "sjobd" if unanswered else None
            )
            if unanswered:
                self._reaper.stop_later(job.unit, UNANSWERED)
            raise
        if result == "done":
            # As the record is now: the job may have ended, or been stopped, while systemd started it.
            return self._records.set_running(job.id, now_usec()) or job
        try:
            state = await self._units.unit_state(job.unit)
        except SjobError:  # systemd not answering now: its start job's word is all there is
            state = None
        if state is not None and ran(state):
            # Seen on systemd 252 in a loaded VM: `sh -c 'exit 5'` made its start job "failed" after it had run
            # (its exit was handled before its start). It ran: its end comes as any job's does (the exit record).
            log.info("%s: systemd said '%s' of its start, but it ran and exited", job.unit, result)
            return self._records.set_running(job.id, state.exec_main_start_usec) or job
        raise self._start_failed(job, result, state)

    def _failed(self, job: Job, outcome: Outcome, stopped_by: str | None = None) -> None:
        """Record that the job could not start, as its record is now: a stop's `stopped_by`, written while systemd
        was asked, stays (review of H); or `stopped_by`, if none."""
        current = self._records.get(job.id) or job
        if not current.state.finished:
            if stopped_by is not None and current.stopped_by is None:
                current = dataclasses.replace(current, stopped_by=stopped_by)
            self._ledger.finish(current, outcome, now_usec())

    async def cap_slice(self, uid: int) -> None:
        """Give the user's slice the policy's caps on all their jobs together, unless it has them already: one D-Bus
        round trip less per start (issue H), and a reloaded policy still reaches the next start."""
        wanted = properties.slice_unit(uid, self._policy().per_user)
        if self._slices.get(uid) != wanted:
            await self._units.set_properties(wanted)
            self._slices[uid] = wanted

    def _start_failed(self, job: Job, result: str, state: UnitState | None) -> SjobError:
        """Record how a unit failed to start (systemd's start job did not say "done"); the error to raise."""
        if state is not None and state.exec_main_code != 0:
            outcome = outcome_of_unit(state)
        else:
            outcome = Outcome(JobState.failed, result, None, None, None)
        message = outcome.message or f"systemd reported '{result}' while starting {job.unit}"
        self._failed(job, dataclasses.replace(outcome, message=message))
        self._reaper.collect_later(job.unit)
        return SjobError(
            ErrorCode.StartFailed,
            f"job {job.id} could not start: {message}",
            hint=setup_failure_hint(outcome.exit_status, job.cwd, job.unit),
        )
