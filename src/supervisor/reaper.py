"""The reaper: the lifecycle of jobs after their start, for as long as sjobd runs. It watches journald for exit
records (`watch_exits`), brings records up to date with the journal and systemd (`refresh`, and `sweep` over every
unfinished job, now and then), adopts at startup the jobs systemd runs that sjobd has no record of (`reconcile`),
resets failed units once they have settled so systemd garbage-collects them, and sends SIGKILL to a stopping job
whose grace period is over. What it learns about a job's end goes into its record through the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable, Coroutine

from supervisor import properties
from supervisor.backends import JobLog, RecordStore, UnitManager
from supervisor.errors import SjobError
from supervisor.ledger import Ledger, now_usec
from supervisor.logformat import ExitRecord
from supervisor.policy import Retention
from supervisor.protocol import UNIT_PREFIX, UNIT_SUFFIX, Job, JobState, parse_job_id
from supervisor.units import CLD_EXITED, Outcome, UnitState, outcome_of_exit, outcome_of_unit

log = logging.getLogger(__name__)

COLLECT_TRIES = 100
COLLECT_INTERVAL = 0.2
SWEEP_INTERVAL = 60.0
KILL_ROUNDS = 120
KILL_INTERVAL = 0.5
WATCH_RETRY_MIN = 1.0  # seconds before the exit watcher reads the journal again after a failure, doubling to MAX
WATCH_RETRY_MAX = 30.0
SETTLE_USEC = 60_000_000  # how long after a provisional end `settled` looks for the exit record
AUTO_RESTART = ("auto-restart", "auto-restart-queued")  # a unit waiting to start its next run (Restart=)


def is_its_run(job: Job, state: UnitState) -> bool:
    """Whether the unit, as systemd reports it, is in the job's run or has none since: not so for a timer's run
    once its service has begun the next run."""
    return not job.invocation or state.invocation_id in ("", job.invocation)


class Reaper:
    def __init__(
        self,
        units: UnitManager,
        journal: JobLog,
        records: RecordStore,
        ledger: Ledger,
        retention: Callable[[], Retention],
    ) -> None:
        self._units = units
        self._journal = journal
        self._records = records
        self._ledger = ledger
        self._retention = retention  # the policy's, as it is at each sweep (a reload may change it)
        self._background: set[asyncio.Task[None]] = set()
        # unit -> (when its grace period ends, on the loop's clock; the task that SIGKILLs it then): at most one per
        # unit, however often it is stopped, so repeated Stop calls cannot pile up tasks in sjobd.
        self._grace: dict[str, tuple[float, asyncio.Task[None]]] = {}

    async def watch_exits(self) -> None:
        """Record every job's end as journald reports it; runs until cancelled.

        A journal that cannot be read (EMFILE while many followers hold readers, a journal file being rotated away)
        must not end the watcher, nor sjobd: it starts again from the oldest unfinished job after a pause, and
        recording an exit twice changes nothing. The sweep covers the pause."""
        delay = WATCH_RETRY_MIN
        while True:
            unfinished = self._records.unfinished()
            since = min((j.created_usec for j in unfinished), default=now_usec())
            try:
                async for job_id, record in self._journal.exits(since):
                    delay = WATCH_RETRY_MIN
                    try:
                        job = self._ledger.record_exit(job_id, record)
                    except SjobError as e:  # a full disk: the record stays unfinished, and a later sweep retries
                        log.error("cannot record the end of job %s: %s", job_id, e.message)
                        continue
                    if job is not None and job.state.finished:
                        # Never between a retried job's attempts: resetting the unit would reset its start limit.
                        self.collect_later(job.unit)
            except OSError as e:
                log.error("reading job exits from the journal failed (%s); again in %.0fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)

    async def reconcile(self) -> None:
        """At startup: adopt jobs systemd runs that have no record (the records were lost), and settle the records
        of jobs that ended while sjobd was down."""
        for unit in await self._units.list_units(f"{UNIT_PREFIX}*{UNIT_SUFFIX}"):
            with contextlib.suppress(SjobError):  # a unit name that is not one of ours
                job_id = parse_job_id(unit.removesuffix(UNIT_SUFFIX))
                # A timer's service has the timer's id: its runs are the timers' business.
                if not self._records.id_taken(job_id) and (state := await self._units.unit_state(unit)) is not None:
                    self._ledger.adopt(job_id, state)
        await self.sweep()

    async def sweep(self) -> None:
        """Bring every unfinished record up to date (exits missed, units vanished); drop records past retention."""
        try:
            if pruned := self._records.prune(self._retention(), now_usec()):
                log.info("dropped %d job records past their retention", pruned)
        except SjobError as e:
            log.error("%s", e.message)
        for job in self._records.unfinished():
            try:
                await self.refresh(job)
            except SjobError as e:  # one job's trouble (a full disk, systemd busy) must not stop the others' sweep
                log.warning("cannot bring job %s up to date: %s", job.id, e.message)

    async def keep_swept(self) -> None:
        """Sweep now and then, for as long as sjobd runs: a safety net under the exit watcher."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except SjobError as e:
                log.warning("sweeping job records failed: %s", e.message)

    async def close(self) -> None:
        """Cancel the collecting and killing still pending."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def refresh(self, job: Job) -> Job:
        """Bring an unfinished job's record up to date with the journal and systemd."""
        current = self._records.get(job.id)
        if current is None or current.state.finished or current.state is JobState.queued:
            return current or job
        job = current
        # Every exit record of its unit's runs, in order: one for a job, one per attempt for a retried job.
        for found in self._journal.find_exits(job.log_id, job.unit, job.invocation):
            job = self._ledger.record_exit(job.id, found) or job
        if job.state.finished:
            return job
        state = await self._units.unit_state(job.unit)
        if state is not None and not is_its_run(job, state):
            state = None  # a timer's service has begun another run since: this one is over
        if state is not None and state.exists and state.finished:
            # Settled, yet no exit record: systemd could not run the ExecStopPost that writes it (seen in CI: "Failed
            # to spawn 'stop-post' task: Resource temporarily unavailable" when a fork bomb filled the cgroup's
            # TasksMax). The unit's own properties tell how it ended; give a late record its chance first.
            if self._ledger.exit_record_may_still_come(job):
                return job
            if (logged := self._manager_exit(job)) is not None:
                self.collect_later(job.unit)
                return logged
            log.warning("%s has no exit record; its result comes from systemd's unit properties", job.unit)
            finished = self._ledger.finish(job, outcome_of_unit(state, job.stopped_by), now_usec())
            self.collect_later(job.unit)
            return finished
        if state is not None and state.exists:
            self._ledger.unit_seen(job.id)
            if state.active_state == "active" and job.state is JobState.starting:
                job = dataclasses.replace(job, state=JobState.running, started_usec=state.exec_main_start_usec)
                self._records.update(job)
            return job
        if self._ledger.exit_record_may_still_come(job):
            return job
        if (logged := self._manager_exit(job)) is not None:
            return logged
        return self._ledger.finish(
            job,
            Outcome(
                JobState.unknown,
                "unknown",
                None,
                None,
                "the unit vanished without recording how the job ended",
            ),
            now_usec(),
        )

    def _manager_exit(self, job: Job) -> Job | None:
        """The job, finished as the service manager logged its unit's end, when its own exit record never came:
        systemd could not run the ExecStopPost that writes it, or (systemd < 257) lost it on a daemon-reload, or the
        unit was collected meanwhile. Without resource figures, which only the exit record has."""
        record = self._journal.find_manager_exit(job.unit, job.invocation)
        if record is None:
            return None
        log.warning("%s has no exit record; its result comes from the service manager's log", job.unit)
        return self._ledger.record_exit(job.id, record)

    def settled(self, job: Job) -> Job:
        """A finished job with its exit record applied if journald has it and the watcher has not got to it yet:
        `sjob run` answers once the command has exited and its output is in (main_exited), a moment before the
        unit's ExecStopPost reports what the job used, and `sjob status` right after should show that. Only for a
        job ended in the last minute without its report (ended provisionally): one journal lookup, no wait."""
        if job.resources is not None or job.ended_usec is None or now_usec() - job.ended_usec > SETTLE_USEC:
            return job
        for found in self._journal.find_exits(job.log_id, job.unit, job.invocation):
            job = self._ledger.record_exit(job.id, found) or job
        return job

    async def main_exited(self, job: Job) -> Job | None:
        """The finished job if systemd reports that its main process exited by itself (not killed: a kill may
        yet be reported as an OOM kill or a timeout, which only the exit record tells reliably)."""
        current = self._records.get(job.id) or job
        if current.state.finished or current.retry is not None:
            # A retried job's main process exits once per attempt: only the exit records say which is its last.
            return current if current.state.finished else None
        try:
            state = await self._units.unit_state(job.unit)
        except SjobError:
            return None
        if state is None or state.exec_main_code != CLD_EXITED:
            return None
        if current.invocation and state.invocation_id != current.invocation:
            return None  # a timer's service already in its next run: what it says is not this run's
        status = state.exec_main_status
        record = ExitRecord("success" if status == 0 else "exit-code", "exited", status, state.exec_main_exit_usec)
        return self._ledger.finish(current, outcome_of_exit(record, current.stopped_by), record.when_usec or now_usec())

    async def runs_now(self, job: Job) -> bool:
        """Whether the job's unit runs the job: not so for a timer's run once its service has begun the next run
        (stopping or signalling the unit then would hit that one). systemd has no "stop this invocation", so a
        run that ends between this check and the stop still lets the stop reach the next; the window is a D-Bus
        round trip against the timer's period."""
        if not job.invocation:
            return True
        state = await self._units.unit_state(job.unit)
        return state is not None and is_its_run(job, state)

    async def between_attempts(self, job: Job, ended_run: str | None = None) -> bool:
        """Whether a retried job's unit waits to start its next attempt (nothing of it runs). With `ended_run`, the
        invocation of an attempt whose exit record came: still the unit's current run, that one is over too, even
        while the unit runs its ExecStopPost (which wrote the record) and does not show the wait yet."""
        try:
            state = await self._units.unit_state(job.unit)
        except SjobError:
            return False
        if state is None:
            return False
        return state.sub_state in AUTO_RESTART or (bool(ended_run) and state.invocation_id == ended_run)

    def collect_later(self, unit: str) -> None:
        """Reset `unit` once it has settled, if it failed (in the background)."""
        self._in_background(self._collect(unit))

    def kill_later(self, unit: str, grace_usec: int, *, forbid_forks: bool = True) -> None:
        """SIGKILL `unit` once `grace_usec` is over; a stop that asks for a shorter grace than the one pending
        replaces it, a longer or equal one changes nothing (the earliest deadline wins, as with systemd's own).
        Without `forbid_forks`, no TasksMax=1 between the kills: a timer's service keeps its settings for its
        later runs (review of J), so only the SIGKILLs stop a fork bomb there."""
        deadline = asyncio.get_running_loop().time() + grace_usec / 1e6
        pending = self._grace.get(unit)
        if pending is not None and not pending[1].done():
            if pending[0] <= deadline:
                return
            pending[1].cancel()
        task = self._in_background(self._kill_after_grace(unit, grace_usec, forbid_forks))
        self._grace[unit] = (deadline, task)
        task.add_done_callback(lambda done: self._forget_grace(unit, done))

    def _in_background(self, work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _forget_grace(self, unit: str, task: asyncio.Task[None]) -> None:
        if (pending := self._grace.get(unit)) is not None and pending[1] is task:
            del self._grace[unit]

    async def _kill_after_grace(self, unit: str, grace_usec: int, forbid_forks: bool) -> None:
        """SIGKILL what is left of a stopping job once its grace period is over, again and again while processes
        remain. Only while systemd waits for the processes to go ("stop-sigterm", or "final-sigterm" after the exit
        report): in between, the unit's own ExecStopPost runs in the same cgroup and must not be killed.

        The first SIGKILL comes before anything else changes, so the job ends by that signal and is reported so.
        Forking is forbidden only after it (TasksMax=1), then the kill repeats: a fork bomb would otherwise outrun
        the rounds (seen in CI: a stop took more than 300 s). Forbidding it first is a race seen in CI too: a
        shell whose fork then fails exits by itself ("exit 2"), and its end is no longer the SIGKILL."""
        await asyncio.sleep(grace_usec / 1e6)
        for round_ in range(KILL_ROUNDS):
            state = await self._units.unit_state(unit)
            if state is None or state.active_state != "deactivating":
                return
            if state.sub_state in ("stop-sigterm", "final-sigterm"):
                log.info("%s: grace period over, sending SIGKILL (%s)", unit, state.sub_state)
                with contextlib.suppress(SjobError):  # it ended meanwhile
                    await self._units.kill(unit, signal.SIGKILL)
                    if round_ == 0 and forbid_forks:
                        await self._units.set_properties(properties.no_new_tasks(unit))
                        await self._units.kill(unit, signal.SIGKILL)
            await asyncio.sleep(KILL_INTERVAL)

    async def _collect(self, unit: str) -> None:
        """Once a recorded unit has settled, reset it if it failed, so systemd garbage-collects it.

        The exit record is written by ExecStopPost, while the unit is still deactivating; resetting then would be
        a no-op and leave a failed unit behind, so wait for the final state.
        """
        waited_out = False
        for _ in range(COLLECT_TRIES):
            try:
                state = await self._units.unit_state(unit)
                if state is None or state.active_state == "inactive":
                    return
                if state.active_state == "failed":
                    await self._units.reset_failed(unit)
                    return
                if state.sub_state in AUTO_RESTART and not waited_out:
                    # A retried job's last attempt failed: systemd waits out RestartSec= only to find the start
                    # limit reached. The job has ended; end the wait.
                    await self._units.stop(unit)
                    waited_out = True
            except SjobError as e:
                log.warning("cannot collect %s: %s", unit, e.message)
                return
            await asyncio.sleep(COLLECT_INTERVAL)
        log.warning("%s did not settle; leaving it to systemd", unit)
