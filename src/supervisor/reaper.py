"""The reaper: the lifecycle of jobs after their start, for as long as sjobd runs. It watches journald for exit
records (`watch_exits`), brings records up to date with the journal and systemd (`refresh`; for a unit systemd says
has stopped or gone, `look_soon`; at startup `sweep` over every unfinished job), adopts at startup the jobs systemd
runs that sjobd has no record of (`reconcile`), drops records past their retention when they are due
(`keep_pruned`), resets failed units once they have settled so systemd garbage-collects them, and sends SIGKILL to a
stopping job whose grace period is over. What it learns about a job's end goes into its record through the ledger.
An idle sjobd wakes for none of this: only journald's and systemd's news, or a deadline, wake it (issue H).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator

from supervisor import properties
from supervisor.backends import JobLog, RecordStore, UnitManager
from supervisor.errors import ErrorCode, SjobError
from supervisor.ledger import Ledger, now_usec
from supervisor.logformat import ExitRecord
from supervisor.policy import Retention
from supervisor.protocol import UNIT_PREFIX, UNIT_SUFFIX, Job, JobState, parse_job_id
from supervisor.units import CLD_EXITED, Outcome, UnitState, outcome_of_exit

log = logging.getLogger(__name__)

COLLECT_TRIES = 100
COLLECT_INTERVAL = 0.2
# After systemd says a unit stopped: time for the exit watcher to record its job's end first (journald wakes its
# readers within 250 ms), so that the look at the unit costs nothing in the usual case.
ENDED_LOOK_DELAY = 1.0
RESWEEP_DELAY = 30.0  # seconds after a record could not be brought up to date before every record is tried again
DEADLINE_SLACK = 0.1  # seconds past a deadline (a grace's end, a record's retention): never a busy loop at it
KILL_INTERVAL = 0.5
KILL_INTERVAL_MAX = 4.0  # between looks at a stopping unit while sjobd has nothing to kill
# How long after a grace period sjobd keeps killing: systemd's own timeouts (TimeoutStopSec=, 90 s, for each of
# stop-sigterm, stop-post, final-sigterm and final-sigkill) are what can keep a unit stopping longer.
KILL_PATIENCE = 4 * 90.0
SETTLE_USEC = 60_000_000  # how long after a provisional end `settled` looks for the exit record
AUTO_RESTART = ("auto-restart", "auto-restart-queued")  # a unit waiting to start its next run (Restart=)
UNANSWERED = "whose start systemd did not answer in time"  # why a unit is stopped (stop_later)


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
        # unit -> (when its grace period ends, on the loop's clock; the run it is for; the task that SIGKILLs it
        # then): at most one per unit, however often it is stopped, so repeated Stop calls cannot pile up tasks.
        self._grace: dict[str, tuple[float, str | None, asyncio.Task[None]]] = {}
        self._to_look: dict[str, float] = {}  # unit -> when to look at its jobs (loop time), in that order
        self._looker: asyncio.Task[None] | None = None
        self._after_grace: dict[str, asyncio.Task[None]] = {}  # job id -> the look at its grace's end
        self._starting: set[str] = set()  # ids of the jobs the launcher is starting (`starting`)
        self._retention_changed = asyncio.Event()
        self._resweep: asyncio.Task[None] | None = None
        units.watch_ends(self.look_soon)

    async def watch_exits(self) -> None:
        """Record every job's end as journald reports it, from the oldest unfinished job's start; runs until
        cancelled. A journal that cannot be read for a while (`JobLog.exits` waits for it), or an exit that cannot
        be recorded (a full disk, a process out of descriptors: a sweep retries), does not end it, which would stop
        sjobd (review of H: users can use up its descriptors with followers). Recording an exit twice changes
        nothing."""
        since = min((j.created_usec for j in self._records.unfinished()), default=now_usec())
        async for job_id, record in self._journal.exits(since):
            try:
                job = self._ledger.record_exit(job_id, record)
            except Exception as e:  # a full disk, no journal reader to be had (EMFILE), a bug: a sweep retries
                self.sweep_later(f"job {job_id}", e)
                continue
            if job is not None and job.state.finished:
                # Never between a retried job's attempts: resetting the unit would reset its start limit.
                self.collect_later(job.unit)

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
        """Bring every unfinished record up to date (exits missed, units vanished): at startup, for what happened
        while sjobd was not running, and a while after a record could not be written."""
        for job in self._records.unfinished():
            try:
                await self.refresh(job)
            except Exception as e:  # one job's trouble (a full disk, systemd busy, a bug) must not stop the others'
                self.sweep_later(f"job {job.id}", e)  # nor sjobd's start (review of H)

    def sweep_later(self, what: str, e: Exception) -> None:
        """`what` could not be brought up to date (a full disk, systemd busy, a journal file rotated away; or a bug,
        logged with its traceback): say so, and sweep in a while, and again after each sweep that fails too. The one
        time sjobd looks at its records without news."""
        if isinstance(e, SjobError | OSError):
            log.warning("cannot bring %s up to date: %s", what, e.message if isinstance(e, SjobError) else e)
        else:
            log.error("bringing %s up to date failed", what, exc_info=e)
        if self._resweep is None or self._resweep.done():
            self._resweep = self._in_background(self._sweep_after(RESWEEP_DELAY))

    async def _sweep_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._resweep = None  # this sweep's own failures schedule the next
        await self.sweep()

    def look_soon(self, unit: str) -> None:
        """Bring the unfinished jobs of `unit` up to date in a moment: systemd says it stopped or went
        (`UnitManager.watch_ends`), or a run of it was recorded late (timers). Usually the exit watcher has recorded
        the end meanwhile, and there is nothing to do. This is how sjobd learns the end of a job whose unit was
        stopped behind its back and whose exit report was lost (a daemon-reload on systemd < 257, a killed report),
        without looking at its units now and then. One worker looks, unit after unit: a daemon-reload unloads every
        unit at once, and their looks must neither flood systemd with calls nor stall the loop (review of H)."""
        if unit not in self._to_look:
            self._to_look[unit] = asyncio.get_running_loop().time() + ENDED_LOOK_DELAY
            if self._looker is None or self._looker.done():
                self._looker = self._in_background(self._look_in_turn())

    async def _look_in_turn(self) -> None:
        loop = asyncio.get_running_loop()
        while self._to_look:
            unit, due = next(iter(self._to_look.items()))
            await asyncio.sleep(max(due - loop.time(), 0.0))
            del self._to_look[unit]  # news of it from now on is looked at again (a timer's next run)
            try:
                await self._look_at(unit)
            except Exception as e:  # systemd busy, a journal file rotated away, a bug: the next units still are
                self.sweep_later(f"the jobs of {unit}", e)

    async def _look_at(self, unit: str) -> None:
        jobs = self._records.unfinished(unit=unit)
        if not jobs:
            return
        state = await self._units.unit_state(unit)
        for job in jobs:
            # Running again, this job's run: loaded again after a daemon-reload, a retried job's next attempt. Only
            # a unit that ended, or went, costs a look at the journal.
            if state is not None and state.exists and not state.finished and is_its_run(job, state):
                continue
            await self.refresh(job)

    def _look_after_grace(self, job: Job) -> None:
        """`refresh` gave the job's exit record a grace to come: look again once it is over, whatever made that look
        (systemd's signal, the startup sweep, a request), so that the job then ends with nobody asking."""
        if (pending := self._after_grace.get(job.id)) is None or pending.done():
            task = self._in_background(self._refresh_after_grace(job))
            self._after_grace[job.id] = task
            task.add_done_callback(lambda done: self._forget_look(job.id, done))

    def _forget_look(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._after_grace.get(job_id) is task:  # not one begun since
            del self._after_grace[job_id]

    async def _refresh_after_grace(self, job: Job) -> None:
        while (left := self._ledger.grace_left(job)) is not None:
            await asyncio.sleep(left + DEADLINE_SLACK)
            try:
                job = await self.refresh(job)
            except (SjobError, OSError) as e:
                self.sweep_later(f"job {job.id}", e)
                return
            if job.state.finished or left == 0.0:  # over, or nothing more to wait for (its record has gone)
                return

    async def keep_pruned(self) -> None:
        """Drop the records past their retention, for as long as sjobd runs: now, then when the longest-ended is due,
        and again when a reload may have changed the retention (`retention_changed`); at no other time."""
        while True:
            retention = self._retention()
            self._retention_changed.clear()
            try:
                if pruned := self._records.prune(retention, now_usec()):
                    log.info("dropped %d job records past their retention", pruned)
                oldest = self._records.oldest_end()
                # Nothing ended yet: what ends from now on is due a whole retention from now (later by as much as
                # an end is recorded late, when it was taken from the unit or the journal afterwards).
                due = retention.max_age_usec if oldest is None else oldest + retention.max_age_usec - now_usec()
            except SjobError as e:  # a full disk: try again later
                log.error("%s", e.message)
                due = int(RESWEEP_DELAY * 1e6)
            changed = asyncio.ensure_future(self._retention_changed.wait())
            try:
                await asyncio.wait({changed}, timeout=max(due / 1e6, 0.0) + DEADLINE_SLACK)
            finally:
                changed.cancel()

    def retention_changed(self) -> None:
        """The policy was reloaded: prune by its retention now, and schedule the next prune by it."""
        self._retention_changed.set()

    async def close(self) -> None:
        """Cancel the collecting and killing still pending."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    @contextlib.contextmanager
    def starting(self, job_id: str) -> Iterator[None]:
        """While the launcher starts the job: its unit may not exist yet, or be inactive with its start job queued,
        which `refresh` must not take for its end (review of H: a status request during a slow start began the
        grace for its exit record, and the look at the grace's end ended a job that then ran)."""
        self._starting.add(job_id)
        try:
            yield
        finally:
            self._starting.discard(job_id)

    async def refresh(self, job: Job) -> Job:
        """Bring an unfinished job's record up to date with the journal and systemd."""
        current = self._records.get(job.id)
        if current is None or current.state.finished or current.state is JobState.queued or job.id in self._starting:
            return current or job
        job = current
        # Every exit record of its unit's runs, in order: one for a job, one per attempt for a retried job.
        for found in self._journal.find_exits(job.log_id, job.unit, job.invocation):
            job = self._ledger.record_exit(job.id, found) or job
        if job.state.finished:
            return job
        state = await self._units.unit_state(job.unit)
        # As recorded now: the exit watcher, or a stop, may have written it meanwhile (review of H).
        if (job := self._records.get(job.id) or job).state.finished:
            return job
        if state is not None and not is_its_run(job, state):
            state = None  # a timer's service has begun another run since: this one is over
        if state is not None and state.exists and state.finished:
            # Settled, yet no exit record: systemd could not run the ExecStopPost that writes it (seen in CI: "Failed
            # to spawn 'stop-post' task: Resource temporarily unavailable" when a fork bomb filled the cgroup's
            # TasksMax), or it was killed. The unit's own properties tell how this run ended (systemd keeps its main
            # process's status, across a reload too): better than the service manager's log, which does not say
            # how a clean end came (exit 0, or SIGTERM). Give a late record, with what the job used, its chance
            # first, unless systemd says the report ran and sent none.
            if not state.report_lost and self._ledger.exit_record_may_still_come(job):
                self._look_after_grace(job)
                return job
            log.warning("%s has no exit record; its result comes from systemd's unit properties", job.unit)
            finished = self._ledger.finish_unreported(job, state)
            self.collect_later(job.unit)
            return finished
        if state is not None and state.exists:
            self._ledger.unit_seen(job.id)
            if state.active_state == "active" and job.state is JobState.starting:
                job = self._records.set_running(job.id, state.exec_main_start_usec) or job
            return job
        if self._ledger.exit_record_may_still_come(job):
            self._look_after_grace(job)
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
        if record.result == "success" and not record.exit_code and not self._stopped_by_anyone(job):
            # systemd logs a clean end of the main process at debug level only, which is exit 0 or death by SIGTERM,
            # SIGINT, SIGHUP or SIGPIPE: for a job nobody stopped, exit 0. For a stopped one, nobody can tell.
            record = dataclasses.replace(record, exit_code="exited", exit_status=0)
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

    def _stopped_by_anyone(self, job: Job) -> bool:
        """Whether somebody stopped the job: a caller, or its forwarder at the output quota (a SIGTERM)."""
        if job.stopped_by is not None:
            return True
        quota = self._journal.find_quota(job.log_id, job.unit, job.log_uid, job.invocation)
        return quota is not None and quota.on_exceed == "stop"

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
        current = self._records.get(job.id) or current  # as recorded now: the exit watcher may have written it
        if current.state.finished:
            return current
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

    def stop_later(self, unit: str, which: str) -> None:
        """Stop `unit` in the background, one sjobd has no job record of, or none that says it runs: `which` says
        why, for the log should the stop fail (a start systemd did not answer in time, which it may carry out yet;
        a timer whose record was lost)."""
        self._in_background(self._stop(unit, which))

    async def _stop(self, unit: str, which: str) -> None:
        try:
            await self._units.stop(unit)
        except SjobError as e:
            if e.code is not ErrorCode.NoSuchJob:  # NoSuchJob: it never came to be
                log.warning("cannot stop %s, %s: %s", unit, which, e.message)

    def collect_later(self, unit: str) -> None:
        """Reset `unit` once it has settled, if it failed (in the background)."""
        self._in_background(self._collect(unit))

    def kill_later(self, unit: str, grace_usec: int, *, forbid_forks: bool = True, run: str | None = None) -> None:
        """SIGKILL `unit` once `grace_usec` is over; a stop that asks for a shorter grace than the one pending
        replaces it, a longer or equal one changes nothing (the earliest deadline wins, as with systemd's own).
        `run`: the unit's run to stop (a timer's run, job.invocation); a grace pending for another run is replaced.
        Without `forbid_forks`, no TasksMax=1 between the kills: a timer's service keeps its settings for its
        later runs (review of J), so only the SIGKILLs stop a fork bomb there."""
        deadline = asyncio.get_running_loop().time() + grace_usec / 1e6
        pending = self._grace.get(unit)
        if pending is not None and not pending[2].done():
            if pending[0] <= deadline and pending[1] == run:
                return
            pending[2].cancel()
        task = self._in_background(self._kill_after_grace(unit, grace_usec, forbid_forks, run))
        self._grace[unit] = (deadline, run, task)
        task.add_done_callback(lambda done: self._forget_grace(unit, done))

    def _in_background(self, work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _forget_grace(self, unit: str, task: asyncio.Task[None]) -> None:
        if (pending := self._grace.get(unit)) is not None and pending[2] is task:
            del self._grace[unit]

    async def _kill_after_grace(self, unit: str, grace_usec: int, forbid_forks: bool, run: str | None) -> None:
        """SIGKILL what is left of a stopping job once its grace period is over, again and again while processes
        remain, never its exit report (the unit's ExecStopPost, run as root in the same cgroup).

        - While systemd waits for the job's main process ("stop-sigterm"), only that process gets the SIGKILL:
          systemd starts the report the moment it has gone, which may be after the state was read and before a kill
          for the whole unit arrives. Such a kill killed the report (seen in CI), and the job's end came late and
          without what it used. A main process gone meanwhile makes systemd refuse the kill; nothing is lost. The
          job ends by that SIGKILL and is reported so. Its other processes live on while the report runs.
        - Once the main process has gone, what is left is the job's own: in "stop-sigterm" if it went before the
          stop began (systemd starts the report once the cgroup is empty), and in "final-sigterm" after the report.
          That gets SIGKILL as a whole, with no more forking (TasksMax=1, first, now that the job's end is decided):
          a fork bomb would otherwise outrun the rounds (seen in CI: a stop took more than 300 s). Forbidding forks
          while the main process lives is a race seen in CI too: a shell whose fork then fails exits by itself
          ("exit 2"), and its end is no longer the SIGKILL. The state is read again after TasksMax=1, which the job
          can see: what is left may all exit then, and the report start. Left is the time between that read and
          the kill: the report is then killed, and only what the job used is lost.
        - Nothing while the report runs ("stop-post"), which the job can make slow; nor while the unit is still
          active (systemd answers StopUnit before it runs the stop job, and a short grace period can be over before
          that). Then it is looked at less and less often, for as long as systemd's own timeouts can keep the unit
          stopping.
        - Only the run that was stopped: a timer's service that has begun its next run is left alone."""
        loop = asyncio.get_running_loop()
        if run is None:  # the unit's run now, which is being stopped
            with contextlib.suppress(SjobError):
                run = state.invocation_id if (state := await self._units.unit_state(unit)) is not None else None
        await asyncio.sleep(grace_usec / 1e6)
        deadline = loop.time() + KILL_PATIENCE
        forks_forbidden = not forbid_forks
        told: set[str] = set()
        interval = KILL_INTERVAL
        while loop.time() < deadline:
            try:
                state = await self._units.unit_state(unit)
            except SjobError as e:  # systemd busy, or the bus being reconnected: not the end of the stop
                self._note(unit, told, f"cannot read its state ({e.message}); trying again")
                state = None
            else:
                if state is None or state.finished or (run and state.invocation_id != run):
                    return
            if state is not None and state.sub_state == "stop-sigterm" and state.main_pid != 0:
                self._note(unit, told, "grace period over, sending SIGKILL to its main process")
                with contextlib.suppress(SjobError):  # it has gone meanwhile: systemd refuses
                    await self._units.kill(unit, signal.SIGKILL, main_only=True)
                interval = KILL_INTERVAL
            elif state is not None and (state.only_leftovers or state.sub_state == "final-sigterm"):
                if not forks_forbidden:
                    forks_forbidden = True
                    with contextlib.suppress(SjobError):
                        await self._units.set_properties(properties.no_new_tasks(unit))
                    continue  # and look again before the kill
                self._note(unit, told, "grace period over, sending SIGKILL to what is left of it")
                with contextlib.suppress(SjobError):  # it ended meanwhile
                    await self._units.kill(unit, signal.SIGKILL)
                interval = KILL_INTERVAL
            else:  # not stopping yet, its report running, or systemd not answering: look again, less often
                interval = min(interval * 2, KILL_INTERVAL_MAX)
            await asyncio.sleep(interval)
        log.warning("%s is still stopping %.0fs after its grace period; leaving it to systemd", unit, KILL_PATIENCE)

    @staticmethod
    def _note(unit: str, told: set[str], what: str) -> None:
        """Log `what` of a unit being killed, once per kind."""
        if what not in told:
            told.add(what)
            log.info("%s: %s", unit, what)

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
