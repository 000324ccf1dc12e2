"""Timers (`sjob run --on-calendar`, `--on-active`, `--on-unit-active`, issue J): jobs that systemd runs later and
again, each run a job of its own.

- Making one (policy action `schedule`, at most the rule's max_timers active per user; never by a token, whose
  revocation would not stop it): the spec is checked as a job's is (profile, limits), then sjob-<id>.timer is
  made with its service sjob-<id>.service in one StartTransientUnit call (timerunits), and recorded. Its id is in
  the jobs' id space: `sjob stop ID` removes it.
- Its runs: systemd starts the same service for every run, each a new invocation, with its own start, output and
  exit records in journald (the shim writes SJOB_JOB_ID=<timer id>; journald stamps each entry with the run,
  _SYSTEMD_INVOCATION_ID, from the unit's cgroup). `watch_runs` follows the start and exit records of the timers'
  services for as long as sjobd runs, from where it left off, so runs while sjobd was down are seen too: the first
  record of a new invocation makes it a job (a fresh job id, `timer` and `invocation` set, the timer's command,
  owner and limits), and its exit record ends it through the ledger, as any job's. `sjob logs`, `status` and
  `stop` then work on the run's id; its journal entries are read by the run's invocation.
- A timer systemd no longer has is `elapsed` (a one-off that fired) or `gone` (the machine rebooted: transient units
  do not survive that); listing and reconciling at start find out. A reloaded policy that no longer lets its
  maker schedule removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging

from supervisor import jobspec, properties, timerunits
from supervisor.access import Access
from supervisor.auth import Principal, principal_from_wire, principal_to_wire
from supervisor.backends import JobLog, RecordStore, UnitManager
from supervisor.errors import ErrorCode, NoAnswerError, SjobError, invalid_argument, no_such_job
from supervisor.jobs import JobService
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger, now_usec
from supervisor.logformat import ExitRecord, UnitEvent
from supervisor.policy import Action, Owner, owns
from supervisor.properties import ShimCommand
from supervisor.protocol import (
    TIMER_SUFFIX,
    UNIT_PREFIX,
    UNIT_SUFFIX,
    Job,
    JobSpec,
    JobState,
    Schedule,
    Timer,
    TimerState,
    parse_job_id,
    timer_unit_for,
    unit_for,
)
from supervisor.reaper import UNANSWERED, Reaper

log = logging.getLogger(__name__)


class TimerService:
    def __init__(
        self,
        units: UnitManager,
        journal: JobLog,
        records: RecordStore,
        ledger: Ledger,
        launcher: Launcher,
        jobs: JobService,
        shim: ShimCommand,
        access: Access,
        reaper: Reaper,
    ) -> None:
        self._units = units
        self._reaper = reaper
        self._journal = journal
        self._records = records
        self._ledger = ledger
        self._launcher = launcher
        self._jobs = jobs
        self._shim = shim
        self._access = access
        self._ids = {t.id for t in records.timers()}  # whose services' runs are ours to record

    # --- requests --------------------------------------------------------------------------------------------

    async def schedule(self, principal: Principal, spec: JobSpec, schedule: Schedule) -> Timer:
        """Make a timer that runs `spec` as `principal` on `schedule`."""
        spec = jobspec.validate(spec)
        schedule = timerunits.validate(schedule)
        if spec.retry is not None or spec.terminal is not None:
            raise invalid_argument(
                f"a timer's runs cannot have {'--retry' if spec.retry is not None else 'a terminal'}",
                hint="leave it out; each run of a timer is a job of its own",
            )
        decision = self._access.decide(principal, Action.schedule)
        if not decision.allowed or decision.rule is None:
            why = f"{principal.name} may not make timers: {decision.reason}"
            hint = "ask an administrator to grant it in /etc/sjob/policy.toml"
            raise self._access.refuse(principal, Action.schedule, SjobError(ErrorCode.PermissionDenied, why, hint))
        admission = self._jobs.admit(principal, spec)
        active = [t for t in self._records.timers(principal.uid, active=True) if owns(principal, Owner(t.uid, t.user))]
        if len(active) >= decision.rule.max_timers:
            why = f"you have {len(active)} timers; policy rule {decision.rule.name!r} allows at most"
            error = SjobError(
                ErrorCode.TooManyJobs,
                f"{why} {decision.rule.max_timers}",
                hint="remove one ('sjob timers' lists them; 'sjob stop ID' removes one)",
            )
            raise self._access.refuse(principal, Action.schedule, error)
        timer_id = self._launcher.new_id()
        timer = Timer(
            id=timer_id,
            unit=timer_unit_for(timer_id),
            state=TimerState.active,
            uid=principal.uid,
            user=principal.name,
            argv=spec.argv,
            cwd=spec.cwd,
            created_usec=now_usec(),
            schedule=schedule,
            limits=admission.limits,
            profile=admission.profile.name,
        )
        policy = self._access.policy
        service = properties.job_unit(
            unit_for(timer_id),
            timer_id,
            spec,
            principal,
            principal.uid,
            principal.gid,
            self._shim,
            admission.limits,
            admission.profile,
            policy.output,
        )
        description = properties.describe(timer_id, principal, spec.argv, "sjob timer")
        unit = timerunits.timer_unit(timer.unit, schedule, description)
        try:
            self._records.insert_timer(timer, json.dumps(principal_to_wire(principal)))
        except SjobError as e:
            raise self._access.refuse(principal, Action.schedule, e) from None
        self._ids.add(timer_id)
        try:
            await self._launcher.cap_slice(principal.uid)  # the runs go into the user's slice, as jobs do
            result = await self._units.start_transient(unit, [service])
            if result != "done":
                raise SjobError(ErrorCode.StartFailed, f"systemd reported '{result}' while starting {timer.unit}")
        except SjobError as e:
            self._records.delete_timer(timer_id)
            self._ids.discard(timer_id)
            if isinstance(e, NoAnswerError):  # systemd may make it yet: a timer with no record must not run
                self._reaper.stop_later(timer.unit, UNANSWERED)
                self._reaper.stop_later(service.name, UNANSWERED)
            raise self._access.refuse(principal, Action.schedule, e) from None
        self._access.allow(principal, Action.schedule, f"{decision.reason}, profile {admission.profile.name}", timer_id)
        log.info("%s made for %s: %s", timer.unit, principal, spec.argv)
        return await self._live(timer)

    async def list_timers(self, principal: Principal, *, everyone: bool = False) -> list[Timer]:
        """The principal's timers, newest first, with their next and last run; everyone's with `everyone`."""
        self._jobs.authorize_list(principal, everyone=everyone)
        timers = self._records.timers(None if everyone else principal.uid)
        if not everyone:
            timers = [t for t in timers if owns(principal, Owner(t.uid, t.user))]
        return [await self._live(t) for t in timers]

    async def remove(self, principal: Principal, timer_id: str) -> Timer:
        """Remove a timer: systemd runs it no more. A run under way goes on (`sjob stop RUN` stops it)."""
        timer_id = parse_job_id(timer_id)
        timer = self._records.get_timer(timer_id)
        if timer is None:
            if self._records.get(timer_id) is not None:
                # A job's id: `sjob stop` asks for a timer only after Stop found no job of the caller's by this id,
                # and Stop has audited why (someone else's job). A second entry here would tell a different story.
                raise no_such_job(timer_id)
            raise self._access.refuse(principal, Action.stop, no_such_job(timer_id), timer_id)
        self._access.authorize(principal, Action.stop, job_id=timer_id, owner=Owner(timer.uid, timer.user))
        if timer.state is not TimerState.active:
            return await self._live(timer)
        return await self._live(
            await self._end(timer, TimerState.removed, f"removed by {principal.name}", principal.name)
        )

    # --- runs --------------------------------------------------------------------------------------------------

    async def watch_runs(self) -> None:
        """Record every run of every timer, as journald reports them; runs until cancelled. A journal that cannot
        be read for a while (`JobLog.runs` waits for it) does not end it, nor a run that cannot be recorded, which
        would stop sjobd: the sweep that follows brings its record up to date, and a run that has none yet gets one
        from its exit record, or at sjobd's next start."""
        async for event in self._journal.runs(self._since(), self._is_timer_service):
            try:
                started = self._record_run(event)
            except Exception as e:  # a full disk, no journal reader to be had (EMFILE), a bug: a sweep retries
                self._reaper.sweep_later(f"a run of {event.unit}", e)
                continue
            if started is not None:
                await self._recheck(*started)  # each run: may its maker still have it? (review of J)

    async def reconcile(self) -> None:
        """At startup: find out which timers systemd no longer has; and, when the records began anew at this start
        (lost, or set aside as damaged), stop the timers of sjob's systemd has that have no record: nobody could
        stop them, their runs would go unrecorded, and no policy would be checked at each (review of H). A run under
        way is adopted as a job. Only then: another sjobd, with records of its own, must not stop them (one with a
        state directory made anew still does: sjobd is one per system)."""
        for timer in self._records.timers(active=True):
            try:
                await self._live(timer)
            except SjobError as e:
                log.warning("cannot check %s: %s", timer.unit, e.message)
        if not self._records.began_anew:
            return
        try:
            units = await self._units.list_units(f"{UNIT_PREFIX}*{TIMER_SUFFIX}")
        except SjobError as e:
            log.warning("cannot look for timers without a record: %s", e.message)
            return
        for unit in units:
            with contextlib.suppress(SjobError):  # a unit name that is not one of ours
                timer_id = parse_job_id(unit)
                if unit == timer_unit_for(timer_id) and self._records.get_timer(timer_id) is None:
                    log.warning("%s has no record (sjobd's records began anew); stopping it", unit)
                    self._reaper.stop_later(unit, "a timer without a record")

    async def recheck(self) -> None:
        """After a policy reload, and at sjobd's start: remove the timers the policy no longer allows."""
        for timer in self._records.timers(active=True):
            await self._recheck(timer)

    async def _recheck(self, timer: Timer, run: Job | None = None) -> None:
        """Remove the timer if its maker, as they are now (`Access.current`), may no longer make it or run its job
        with its profile and limits (review of J: every check a new timer passes, bar the count); and stop `run`,
        the run that has just begun. No check may stop sjobd's watchers: a failure is logged."""
        try:
            await self._check(timer, run)
        except Exception:
            log.exception("%s: checking it against the policy failed", timer.unit)

    async def _check(self, timer: Timer, run: Job | None) -> None:
        raw = self._records.timer_principal(timer.id)
        try:
            stored = principal_from_wire(json.loads(raw or ""))
        except (ValueError, KeyError, TypeError) as e:
            log.error("%s: cannot check it against the policy (%s)", timer.unit, e)
            return
        try:
            principal = self._access.current(stored, Action.schedule, now_usec(), timer.id)
            decision = self._access.decide(principal, Action.schedule)
            if not decision.allowed:
                error = SjobError(ErrorCode.PermissionDenied, decision.reason)
                raise self._access.refuse(principal, Action.schedule, error, timer.id)
            spec = JobSpec(timer.argv, timer.cwd, limits=timer.limits, profile=timer.profile)
            self._jobs.admit(principal, spec, timer.id)
        except SjobError as e:
            why = f"removed: the policy no longer allows it ({e.message})"
            try:
                if run is not None:  # it began before anyone could check it (systemd starts a timer's runs): end it
                    await self._jobs.stop_run(run, "policy")
            finally:
                latest = self._records.get_timer(timer.id)  # its maker may have removed it meanwhile
                if latest is not None and latest.state is TimerState.active:
                    await self._end(latest, TimerState.removed, why, "policy")

    def _since(self) -> int:
        """Where reading runs starts: the latest recorded run of each timer that may still run (or its making),
        and every run not yet ended, so that nothing that happened while sjobd was away is missed."""
        points = []
        for timer in self._records.timers():
            if timer.state is TimerState.active:
                _, latest = self._records.runs(timer.id)
                run = self._records.get(latest) if latest is not None else None
                points.append(run.created_usec if run is not None else timer.created_usec)
        points += [j.created_usec for j in self._records.unfinished() if j.timer is not None]
        return min(points, default=now_usec())

    def _is_timer_service(self, unit: str) -> bool:
        name = unit.removeprefix(UNIT_PREFIX).removesuffix(UNIT_SUFFIX)
        return unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX) and name in self._ids

    def _record_run(self, event: UnitEvent) -> tuple[Timer, Job] | None:
        """Record a run's start or end; the timer and the run if it is a run not recorded before, of a timer that
        is still active."""
        timer_id = event.unit.removeprefix(UNIT_PREFIX).removesuffix(UNIT_SUFFIX)
        timer = self._records.get_timer(timer_id)
        record = event.record
        if timer is None:
            return None
        run = self._records.find_run(timer_id, record.invocation)
        new = run is None
        if run is None:
            if not isinstance(record, ExitRecord) and event.uid != timer.uid:
                return None  # a start record not from the timer's user: not its shim's
            run = self._new_run(timer, record.invocation, record.when_usec, started=not isinstance(record, ExitRecord))
        if isinstance(record, ExitRecord):
            self._ledger.record_exit(run.id, record)
        return (timer, run) if new and timer.state is TimerState.active else None

    def _new_run(self, timer: Timer, invocation: str, when_usec: int, *, started: bool) -> Job:
        job_id = self._launcher.new_id()
        run = Job(
            id=job_id,
            unit=unit_for(timer.id),
            state=JobState.running,
            uid=timer.uid,
            user=timer.user,
            argv=timer.argv,
            cwd=timer.cwd,
            created_usec=when_usec or now_usec(),
            started_usec=when_usec if started else None,
            limits=timer.limits,
            profile=timer.profile,
            timer=timer.id,
            invocation=invocation,
        )
        self._launcher.record(run)
        log.info("%s: run %s started (invocation %s)", timer.unit, job_id, invocation)
        # Read from the journal after the fact (sjobd was down, or the journal failed it), the run may be over, its
        # exit report lost: then systemd's signal came before the run had a record (review of H).
        self._reaper.look_soon(run.unit)
        return run

    # --- state -------------------------------------------------------------------------------------------------

    async def _live(self, timer: Timer) -> Timer:
        """The timer with its runs recorded and what systemd says of its next and last run; a timer systemd no
        longer has is settled as elapsed or gone."""
        count, latest = self._records.runs(timer.id)
        timer = dataclasses.replace(timer, runs=count, last_job=latest)
        if timer.state is not TimerState.active:
            return timer
        state = await self._units.timer_state(timer.unit)
        if state is None or not state.exists or state.active_state in ("inactive", "failed"):
            loaded = state is not None and state.exists  # stopped or failed, not collected: make systemd let go
            schedule = timer.schedule
            if schedule.on_calendar is None and schedule.on_unit_active_usec is None:
                return await self._end(timer, TimerState.elapsed, "elapsed: it was to run once", None, stop=loaded)
            why = "its timer unit is gone (the machine rebooted?)" if not loaded else "systemd stopped its timer unit"
            return await self._end(timer, TimerState.gone, why, None, stop=loaded)
        return dataclasses.replace(timer, next_usec=state.next_usec, last_usec=state.last_usec)

    async def _end(self, timer: Timer, state: TimerState, message: str, by: str | None, *, stop: bool = True) -> Timer:
        if stop:
            try:
                await self._units.stop(timer.unit)
                await self._units.reset_failed(timer.unit)
            except SjobError as e:
                if e.code is not ErrorCode.NoSuchJob:
                    raise
        timer = dataclasses.replace(
            timer, state=state, ended_usec=now_usec(), removed_by=by, message=message, next_usec=None
        )
        self._records.update_timer(timer)
        log.info("%s: %s", timer.unit, message)
        return timer
