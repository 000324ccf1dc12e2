"""Jobs: start them, follow their output, know how they ended. The orchestration between policy, the unit
manager, the journal and the record store, each reached through a small Protocol so tests can use fakes.

The life of a job:
1. `start` validates the spec, writes a record (state starting), starts sjob-<id>.service and waits for systemd's
   start job: "done" means the shim was executed (state running); anything else means the unit failed before the
   command ran, and the error says why (e.g. the working directory does not exist).
2. The job's output and its exit are records in journald (see logformat). `follow` replays them from the start.
3. `watch_exits` runs for the daemon's lifetime: for every exit record it records the job's result and resets the
   unit if it failed, so finished units do not pile up in systemd. It starts reading from the oldest unfinished
   job, so exits that happened while sjobd was down are recorded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine

from supervisor import jobspec, limits, properties
from supervisor.access import Access
from supervisor.auth import Principal
from supervisor.backends import JobLog, RecordStore, UnitManager
from supervisor.errors import ErrorCode, SjobError, invalid_argument, no_such_job
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord
from supervisor.policy import Action, Owner, Policy, ProfilePolicy, owns
from supervisor.profiles import Profile, Profiles
from supervisor.properties import ShimCommand
from supervisor.protocol import (
    MAX_CPUS,
    UNIT_PREFIX,
    UNIT_SUFFIX,
    Chunk,
    Job,
    JobSpec,
    JobState,
    Resources,
    Stream,
    parse_job_id,
    unit_for,
)
from supervisor.quantities import format_cpu_list, parse_cpu_list
from supervisor.units import (
    CLD_EXITED,
    Outcome,
    UnitState,
    outcome_of_exit,
    outcome_of_unit,
    over_quota,
    setup_failure_hint,
)

log = logging.getLogger(__name__)

# How long a unit may be gone from systemd without an exit record before we call the job's end unknown. The exit
# record is written just before the unit is collected, so it can trail the unit's disappearance a little.
VANISHED_GRACE_USEC = 10 * 1_000_000
COLLECT_TRIES = 100
COLLECT_INTERVAL = 0.2
SWEEP_INTERVAL = 60.0
# A stop's grace period ends with SIGKILL from systemd at the unit's TimeoutStopSec (set when it starts), so a grace
# can only be shorter: sjobd sends the SIGKILL itself when it is (systemd refuses to change TimeoutStopUSec on a
# running transient unit).
MAX_GRACE_USEC = properties.DEFAULT_STOP_TIMEOUT_USEC
KILL_ROUNDS = 120
KILL_INTERVAL = 0.5
WATCH_RETRY_MIN = 1.0  # seconds before the exit watcher reads the journal again after a failure, doubling to MAX
WATCH_RETRY_MAX = 30.0


def is_block_device(path: str) -> bool:
    """Whether /dev/NAME is a block device the kernel knows. Asked of sysfs: sjobd runs with PrivateDevices=."""
    name = path.removeprefix("/dev/")
    return path.startswith("/dev/") and "/" not in name and os.path.isdir(f"/sys/class/block/{name}")


def online_cpus() -> frozenset[int]:
    """The CPUs the kernel has online (a cpuset naming only others would leave a job unconfined)."""
    with open("/sys/devices/system/cpu/online") as f:
        return frozenset(parse_cpu_list(f.read(), "/sys/devices/system/cpu/online", MAX_CPUS))


def now_usec() -> int:
    return time.time_ns() // 1000


class JobService:
    def __init__(
        self,
        units: UnitManager,
        journal: JobLog,
        records: RecordStore,
        shim: ShimCommand,
        access: Access,
        profiles: Profiles,
        is_block_device: Callable[[str], bool] = is_block_device,
        online_cpus: Callable[[], frozenset[int]] = online_cpus,
    ) -> None:
        self._units = units
        self._access = access
        self._profiles = profiles
        self._is_block_device = is_block_device
        self._online_cpus = online_cpus
        self._journal = journal
        self._records = records
        self._shim = shim
        self._vanished: dict[str, int] = {}  # job id -> when its unit was first seen gone without an exit record
        self._background: set[asyncio.Task[None]] = set()
        # unit -> (when its grace period ends, on the loop's clock; the task that SIGKILLs it then): at most one per
        # unit, however often it is stopped, so repeated Stop calls cannot pile up tasks in sjobd.
        self._grace: dict[str, tuple[float, asyncio.Task[None]]] = {}

    # --- requests ------------------------------------------------------------------------------------------

    async def start(self, principal: Principal, spec: JobSpec) -> Job:
        spec = jobspec.validate(spec)
        uid, gid = principal.uid, principal.gid  # a token's principal is already the local user it maps to
        decision = self._access.decide(principal, Action.run)
        if not decision.allowed or decision.rule is None:
            raise self._access.refuse(
                principal,
                Action.run,
                SjobError(
                    ErrorCode.PermissionDenied,
                    f"{principal.name} may not run jobs: {decision.reason}",
                    hint="ask an administrator to grant it in /etc/sjob/policy.toml",
                ),
            )
        rule = decision.rule
        try:
            profile = self._profile(spec.profile, rule.profiles)
            job_limits = limits.check(spec.limits, rule.limits)
            for device in limits.devices(job_limits):
                if not self._is_block_device(device):
                    raise invalid_argument(
                        f"{device} is not a block device",
                        hint="name a disk such as /dev/vda, or a path on it such as /",
                    )
            if job_limits.allowed_cpus is not None:
                online = self._online_cpus()
                if offline := set(job_limits.allowed_cpus) - online:
                    raise invalid_argument(
                        f"--allowed-cpus: this machine has no CPU {format_cpu_list(sorted(offline))} online",
                        hint=f"its CPUs are {format_cpu_list(sorted(online))}",
                    )
            running = len(self._records.unfinished(uid))
            if rule.max_jobs is not None and running >= rule.max_jobs:
                raise SjobError(
                    ErrorCode.TooManyJobs,
                    f"you have {running} jobs running; policy rule {rule.name!r} allows at most"
                    f" {rule.max_jobs} at once",
                    hint="wait for one to end, or stop one ('sjob list --running')",
                )
        except SjobError as e:
            raise self._access.refuse(principal, Action.run, e) from None
        job = Job(
            id=self._new_id(),
            unit="",
            state=JobState.starting,
            uid=uid,
            user=principal.name,
            argv=spec.argv,
            cwd=spec.cwd,
            created_usec=now_usec(),
            limits=job_limits,
            profile=profile.name,
        )
        job = dataclasses.replace(job, unit=unit_for(job.id))
        try:
            self._records.insert(job, self._access.policy.retention)
        except SjobError as e:  # a full disk: refused before any unit exists
            raise self._access.refuse(principal, Action.run, e) from None
        self._access.allow(principal, Action.run, f"{decision.reason}, profile {profile.name}", job.id)
        output = self._access.policy.output
        unit = properties.job_unit(job.unit, job.id, spec, principal, uid, gid, self._shim, job_limits, profile, output)
        log.info("starting %s for %s: %s", job.unit, principal, job.argv)
        try:
            await self._units.set_properties(properties.slice_unit(uid, self._access.policy.per_user))
            result = await self._units.start_transient(unit)
        except SjobError as e:
            self._finish(job, Outcome(JobState.failed, "resources", None, None, e.message), now_usec())
            raise
        if result == "done":
            job = dataclasses.replace(job, state=JobState.running, started_usec=now_usec())
            self._records.update(job)
            return job
        return await self._start_failed(job, result)

    async def follow(
        self,
        principal: Principal,
        job_id: str,
        *,
        wait: bool = True,
        streams: Collection[Stream] | None = None,
        after_seq: int = 0,
    ) -> AsyncGenerator[Chunk | Job]:
        """The job's output from the very start (or after record `after_seq`), then the job: as it ended, or,
        without `wait`, as it is once the output written so far has been sent. For a finished job this is a
        replay. `streams` selects the output."""
        job = self._visible(principal, job_id, Action.logs)
        live = not job.state.finished and wait
        ended_elsewhere = False
        async for record in self._journal.job_records(job.id, job.unit, job.uid, follow=live):
            if isinstance(record, OutputRecord):
                if record.seq > after_seq and (streams is None or record.stream in streams):
                    yield Chunk(Stream(record.stream), record.data, record.when_usec, record.seq)
            elif isinstance(record, ExitRecord):
                yield self._record_exit(job.id, record) or job
                return
            elif live and isinstance(record, EofRecord) and (ended := await self._main_exited(job)) is not None:
                # All output is in and the command exited by itself: answer now rather than after the unit's
                # ExecStopPost has run and its record has reached us. That record still comes, and is applied.
                yield ended
                return
            elif record is None:
                # A quiet tick. The exit record normally arrives through this reader after all output; give it
                # one more tick once the job is known to have ended, and stop at once if it ended unknown.
                refreshed = await self._refresh(job)
                if refreshed.state is JobState.unknown or (refreshed.state.finished and ended_elsewhere):
                    yield refreshed
                    return
                ended_elsewhere = refreshed.state.finished
        yield self._records.get(job.id) or job

    async def status(self, principal: Principal, job_id: str) -> Job:
        job = self._visible(principal, job_id, Action.status)
        return job if job.state.finished else await self._refresh(job)

    async def stop(
        self, principal: Principal, job_id: str, *, signo: int | None = None, grace_usec: int | None = None
    ) -> Job:
        """Stop the job (SIGTERM to all its processes, SIGKILL after the grace period), or with `signo` only send
        that signal. Returns at once; the job's end comes through follow/status. A finished job is left alone."""
        job = self._visible(principal, job_id, Action.stop)
        if not job.state.finished:
            job = await self._refresh(job)
        if job.state.finished:
            return job
        if signo is not None:
            log.info("%s: %s sends signal %d", job.unit, principal, signo)
            await self._units.kill(job.unit, signo)
            return job
        if grace_usec is not None and not 0 <= grace_usec <= MAX_GRACE_USEC:
            raise invalid_argument(
                f"grace period {grace_usec / 1e6:g}s is out of range",
                hint=f"give 0 to {MAX_GRACE_USEC // 1_000_000}s (the job unit's TimeoutStopSec), e.g. --grace 10s",
            )
        job = dataclasses.replace(job, stopped_by=principal.name)
        self._records.update(job)
        log.info("%s: stopped by %s", job.unit, principal)
        await self._units.stop(job.unit)
        if grace_usec is not None and grace_usec < MAX_GRACE_USEC:
            self._kill_later(job.unit, grace_usec)
        return job

    def list_jobs(self, principal: Principal, *, everyone: bool = False, running: bool = False) -> list[Job]:
        """The principal's jobs, newest first; with `everyone`, all users' jobs (root and sjob admins)."""
        self._access.authorize(principal, Action.list)
        if everyone and not self._access.is_admin(principal):
            raise self._access.refuse(
                principal,
                Action.list,
                SjobError(
                    ErrorCode.PermissionDenied,
                    "only root and sjob admins may list other users' jobs",
                    hint="leave out --all",
                ),
            )
        jobs = self._records.list_jobs(None if everyone else principal.uid)
        if not everyone:  # a token sees only its subject's jobs, not all of its run_as user's
            jobs = [j for j in jobs if owns(principal, Owner(j.uid, j.user))]
        return [j for j in jobs if not j.state.finished] if running else jobs

    # --- background ----------------------------------------------------------------------------------------

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
                        job = self._record_exit(job_id, record)
                    except SjobError as e:  # a full disk: the record stays unfinished, and a later sweep retries
                        log.error("cannot record the end of job %s: %s", job_id, e.message)
                        continue
                    if job is not None:
                        self._collect_later(job.unit)
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
                if self._records.get(job_id) is None and (state := await self._units.unit_state(unit)) is not None:
                    self._adopt(job_id, state)
        await self.sweep()

    async def sweep(self) -> None:
        """Bring every unfinished record up to date (exits missed, units vanished); drop records past retention."""
        try:
            if pruned := self._records.prune(self._access.policy.retention, now_usec()):
                log.info("dropped %d job records past their retention", pruned)
        except SjobError as e:
            log.error("%s", e.message)
        for job in self._records.unfinished():
            try:
                await self._refresh(job)
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
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- internals -----------------------------------------------------------------------------------------

    def set_policy(self, policy: Policy, profiles: Profiles) -> None:
        """Apply a reloaded policy to the requests that follow; running jobs keep what they started with."""
        self._access.policy = policy
        self._profiles = profiles

    def _profile(self, name: str | None, choice: ProfilePolicy) -> Profile:
        allowed = choice.allowed
        profile = self._profiles.get(name or choice.default)  # an unknown name fails here
        if profile.name not in allowed:
            raise SjobError(
                ErrorCode.PermissionDenied,
                f"the profile {profile.name!r} is not allowed by policy",
                hint=f"use one of: {', '.join(allowed)}",
            )
        return profile

    def _new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(4)
            if self._records.get(job_id) is None:
                return job_id

    def _visible(self, principal: Principal, job_id: str, action: Action) -> Job:
        """The job, if the principal may do `action` to it; someone else's job is refused as missing."""
        job_id = parse_job_id(job_id)
        job = self._records.get(job_id)
        if job is None:
            raise self._access.refuse(principal, action, no_such_job(job_id), job_id)
        self._access.authorize(principal, action, job_id=job_id, owner=Owner(job.uid, job.user))
        return job

    async def _start_failed(self, job: Job, result: str) -> Job:
        state = await self._units.unit_state(job.unit)
        if state is not None and state.exec_main_code != 0:
            outcome = outcome_of_unit(state)
        else:
            outcome = Outcome(JobState.failed, result, None, None, None)
        message = outcome.message or f"systemd reported '{result}' while starting {job.unit}"
        self._finish(job, dataclasses.replace(outcome, message=message), now_usec())
        self._collect_later(job.unit)
        raise SjobError(
            ErrorCode.StartFailed,
            f"job {job.id} could not start: {message}",
            hint=setup_failure_hint(outcome.exit_status, job.cwd, job.unit),
        )

    def _adopt(self, job_id: str, unit: UnitState) -> None:
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

    def _record_exit(self, job_id: str, record: ExitRecord) -> Job | None:
        """Apply a job's exit record. It is the authority on how the job ended: it overrides an earlier
        provisional outcome (from _main_exited, or "unknown") where that differs."""
        job = self._records.get(job_id)
        if job is None:
            return None
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
        # reaches this method from the watcher, every follower and the sweep. It changes only the message.
        if (quota := self._journal.find_quota(job.id, job.unit, job.uid)) is not None:
            outcome = over_quota(outcome, quota)
        return self._finish(job, outcome, record.when_usec or now_usec(), record.resources or job.resources)

    async def _main_exited(self, job: Job) -> Job | None:
        """The finished job if systemd reports that its main process exited by itself (not killed: a kill may
        yet be reported as an OOM kill or a timeout, which only the exit record tells reliably)."""
        current = self._records.get(job.id) or job
        if current.state.finished:
            return current
        try:
            state = await self._units.unit_state(job.unit)
        except SjobError:
            return None
        if state is None or state.exec_main_code != CLD_EXITED:
            return None
        status = state.exec_main_status
        record = ExitRecord("success" if status == 0 else "exit-code", "exited", status, state.exec_main_exit_usec)
        return self._finish(current, outcome_of_exit(record, current.stopped_by), record.when_usec or now_usec())

    def _finish(self, job: Job, outcome: Outcome, when: int, resources: Resources | None = None) -> Job:
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
        log.info("%s ended: %s", job.unit, outcome)
        return job

    def _collect_later(self, unit: str) -> None:
        self._in_background(self._collect(unit))

    def _in_background(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _kill_later(self, unit: str, grace_usec: int) -> None:
        """SIGKILL `unit` once `grace_usec` is over; a stop that asks for a shorter grace than the one pending
        replaces it, a longer or equal one changes nothing (the earliest deadline wins, as with systemd's own)."""
        deadline = asyncio.get_running_loop().time() + grace_usec / 1e6
        pending = self._grace.get(unit)
        if pending is not None and not pending[1].done():
            if pending[0] <= deadline:
                return
            pending[1].cancel()
        task = asyncio.create_task(self._kill_after_grace(unit, grace_usec))
        self._grace[unit] = (deadline, task)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda done: self._forget_grace(unit, done))

    def _forget_grace(self, unit: str, task: asyncio.Task[None]) -> None:
        if (pending := self._grace.get(unit)) is not None and pending[1] is task:
            del self._grace[unit]

    async def _kill_after_grace(self, unit: str, grace_usec: int) -> None:
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
                    if round_ == 0:
                        await self._units.set_properties(properties.no_new_tasks(unit))
                        await self._units.kill(unit, signal.SIGKILL)
            await asyncio.sleep(KILL_INTERVAL)

    async def _collect(self, unit: str) -> None:
        """Once a recorded unit has settled, reset it if it failed, so systemd garbage-collects it.

        The exit record is written by ExecStopPost, while the unit is still deactivating; resetting then would be
        a no-op and leave a failed unit behind, so wait for the final state.
        """
        for _ in range(COLLECT_TRIES):
            try:
                state = await self._units.unit_state(unit)
                if state is None or state.active_state == "inactive":
                    return
                if state.active_state == "failed":
                    await self._units.reset_failed(unit)
                    return
            except SjobError as e:
                log.warning("cannot collect %s: %s", unit, e.message)
                return
            await asyncio.sleep(COLLECT_INTERVAL)
        log.warning("%s did not settle; leaving it to systemd", unit)

    def _record_may_still_come(self, job: Job) -> bool:
        """Whether the job's exit record may yet arrive: for VANISHED_GRACE_USEC after its unit was first seen
        ended (or gone) without one."""
        first_seen = self._vanished.setdefault(job.id, now_usec())
        return now_usec() - first_seen < VANISHED_GRACE_USEC

    async def _refresh(self, job: Job) -> Job:
        """Bring an unfinished job's record up to date with the journal and systemd."""
        current = self._records.get(job.id)
        if current is None or current.state.finished:
            return current or job
        job = current
        if (found := self._journal.find_exit(job.id)) is not None:
            return self._record_exit(job.id, found) or job
        state = await self._units.unit_state(job.unit)
        if state is not None and state.exists and state.finished:
            # Settled, yet no exit record: systemd could not run the ExecStopPost that writes it (seen in CI: "Failed
            # to spawn 'stop-post' task: Resource temporarily unavailable" when a fork bomb filled the cgroup's
            # TasksMax). The unit's own properties tell how it ended; give a late record its chance first.
            if self._record_may_still_come(job):
                return job
            log.warning("%s has no exit record; its result comes from systemd's unit properties", job.unit)
            finished = self._finish(job, outcome_of_unit(state, job.stopped_by), now_usec())
            self._collect_later(job.unit)
            return finished
        if state is not None and state.exists:
            self._vanished.pop(job.id, None)
            if state.active_state == "active" and job.state is JobState.starting:
                job = dataclasses.replace(job, state=JobState.running, started_usec=state.exec_main_start_usec)
                self._records.update(job)
            return job
        if self._record_may_still_come(job):
            return job
        return self._finish(
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
