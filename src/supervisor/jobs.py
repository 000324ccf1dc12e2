"""Jobs: the requests about them (start, follow, status, stop, list), each checked against the policy. They
orchestrate the unit manager, the journal and the record store, each reached through a small Protocol (`backends`)
so tests can use fakes. What happens to a job after its start is the reaper's; its end is written by the ledger.

The life of a job:
1. `start` validates the spec, writes a record (state starting), starts sjob-<id>.service and waits for systemd's
   start job: "done" means the shim was executed (state running); anything else means the unit failed before the
   command ran, and the error says why (e.g. the working directory does not exist).
2. The job's output and its exit are records in journald (see logformat). `follow` replays them from the start.
3. `Reaper.watch_exits` runs for the daemon's lifetime: for every exit record it records the job's result and resets
   the unit if it failed, so finished units do not pile up in systemd. It starts reading from the oldest unfinished
   job, so exits that happened while sjobd was down are recorded too.

At the policy's max_jobs a start is refused, or with `queue` (or the rule's queue_by_default) the job waits in its
owner's queue (queue.py) and starts from there, checked against the policy again. A retried job (spec.retry) is one
unit that systemd runs again (retries.py); its output is every attempt's, in order, with a marker where each next
attempt begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Collection

from supervisor import jobspec, limits, properties
from supervisor.access import Access
from supervisor.auth import Principal
from supervisor.backends import JobLog, RecordStore, UnitManager
from supervisor.errors import ErrorCode, NoSuchProcessError, SjobError, invalid_argument, no_such_job
from supervisor.launcher import Admission, Launcher
from supervisor.ledger import Ledger, now_usec
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord, StartRecord
from supervisor.policy import Action, Owner, Policy, ProfilePolicy, Rule, owns
from supervisor.profiles import Profile, Profiles
from supervisor.properties import JobStdio
from supervisor.protocol import (
    MAX_CPUS,
    AttemptStart,
    Chunk,
    Job,
    JobSpec,
    JobState,
    JobUsage,
    Stream,
    parse_job_id,
)
from supervisor.quantities import format_cpu_list, parse_cpu_list
from supervisor.queue import JobQueue
from supervisor.reaper import Reaper
from supervisor.units import Outcome

log = logging.getLogger(__name__)

# A stop's grace period ends with SIGKILL from systemd at the unit's TimeoutStopSec (set when it starts), so a grace
# can only be shorter: sjobd sends the SIGKILL itself when it is (systemd refuses to change TimeoutStopUSec on a
# running transient unit).
MAX_GRACE_USEC = properties.DEFAULT_STOP_TIMEOUT_USEC


def _ending(job: Job) -> SjobError:
    return SjobError(
        ErrorCode.InvalidArgument,
        f"job {job.id} is ending its run: its command has exited, and no signal reaches what is left of it",
        hint=f"sjob status {job.id} shows how it ended, or what comes next",
    )


def is_block_device(path: str) -> bool:
    """Whether /dev/NAME is a block device the kernel knows. Asked of sysfs: sjobd runs with PrivateDevices=."""
    name = path.removeprefix("/dev/")
    return path.startswith("/dev/") and "/" not in name and os.path.isdir(f"/sys/class/block/{name}")


def online_cpus() -> frozenset[int]:
    """The CPUs the kernel has online (a cpuset naming only others would leave a job unconfined)."""
    with open("/sys/devices/system/cpu/online") as f:
        return frozenset(parse_cpu_list(f.read(), "/sys/devices/system/cpu/online", MAX_CPUS))


class JobService:
    def __init__(
        self,
        units: UnitManager,
        journal: JobLog,
        records: RecordStore,
        ledger: Ledger,
        reaper: Reaper,
        launcher: Launcher,
        access: Access,
        profiles: Profiles,
        queue: JobQueue,
        is_block_device: Callable[[str], bool] = is_block_device,
        online_cpus: Callable[[], frozenset[int]] = online_cpus,
    ) -> None:
        self._units = units
        self._journal = journal
        self._records = records
        self._ledger = ledger
        self._reaper = reaper
        self._launcher = launcher
        self._access = access
        self._profiles = profiles
        self._is_block_device = is_block_device
        self._online_cpus = online_cpus
        self._queue = queue
        self._tasks: set[asyncio.Task[Job]] = set()
        queue.bind(self.admit)
        ledger.on_attempt(self._attempt_ended)

    async def start(
        self,
        principal: Principal,
        spec: JobSpec,
        stdio: JobStdio = JobStdio(),  # noqa: B008
        *,
        queue: bool | None = None,
    ) -> Job:
        """Start `spec` as `principal`, reading `stdio` (descriptors the caller passed, already checked). At the
        policy's max_jobs, queue it if `queue` says so (None: as the rule says) rather than refuse it."""
        spec = jobspec.validate(spec)
        if queue and (stdio.stdin is not None or spec.terminal is not None):
            raise invalid_argument(
                "--queue: a queued job reads no input, and this one was given "
                + ("a terminal" if spec.terminal is not None else "a stdin"),
                hint="leave out --pty, or give -n (nothing to read) or the input as a file the command opens",
            )
        admission = self.admit(principal, spec)
        # A token's principal is already the local user it maps to: caps are per uid.
        running = len(self._records.unfinished(principal.uid))
        rule = admission.rule
        if rule.max_jobs is not None and running >= rule.max_jobs:
            wanted = queue if queue is not None else rule.queue_by_default and stdio == JobStdio() and not spec.terminal
            if not wanted or rule.max_jobs == 0:  # max_jobs = 0: a queued job would wait for ever
                raise self._access.refuse(
                    principal,
                    Action.run,
                    SjobError(
                        ErrorCode.TooManyJobs,
                        f"you have {running} jobs running; policy rule {rule.name!r} allows at most"
                        f" {rule.max_jobs} at once",
                        hint="wait for one to end, stop one ('sjob list --running'), or add --queue to start this"
                        " one when one ends",
                    ),
                )
            return self._queue.add(principal, spec, admission)
        job = self._launcher.job_of(principal, spec, admission, JobState.starting, stdio)
        try:
            self._launcher.record(job)
        except SjobError as e:  # a full disk: refused before any unit exists
            raise self._access.refuse(principal, Action.run, e) from None
        self._access.allow(principal, Action.run, admission.reason(spec), job.id)
        return await self._launcher.start_spec(principal, spec, job, admission, stdio)

    def admit(self, principal: Principal, spec: JobSpec, job_id: str | None = None) -> Admission:
        """The policy's word on running `spec` (all but the cap on running jobs); refusals are audited, naming
        `job_id` if the job has one already (a queued job, a timer)."""
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
                job_id,
            )
        rule = decision.rule
        if spec.retry is not None:
            self._check_retry(principal, spec.retry.count, rule, job_id)
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
        except SjobError as e:
            raise self._access.refuse(principal, Action.run, e, job_id) from None
        return Admission(decision, rule, profile, job_limits)

    def _check_retry(self, principal: Principal, count: int, rule: Rule, job_id: str | None) -> None:
        decision = self._access.decide(principal, Action.retry)
        if not decision.allowed:
            why = f"{principal.name} may not have jobs retried: {decision.reason}"
        elif count > rule.max_retries:
            why = f"--retry {count} is above the {rule.max_retries} retries policy rule {rule.name!r} allows"
        else:
            return
        hint = "ask an administrator to grant it in /etc/sjob/policy.toml"
        error = SjobError(ErrorCode.PermissionDenied, why, hint=hint)
        raise self._access.refuse(principal, Action.retry, error, job_id)

    async def follow(
        self,
        principal: Principal,
        job_id: str,
        *,
        wait: bool = True,
        streams: Collection[Stream] | None = None,
        after_seq: int = 0,
    ) -> AsyncGenerator[Chunk | AttemptStart | Job]:
        """The job's output from the very start (or after record `after_seq`), then the job: as it ended, or,
        without `wait`, as it is once the output written so far has been sent. For a finished job this is a
        replay. `streams` selects the output. A queued job's output begins once it starts: with `wait`, this
        waits for that. A retried job's is every attempt's, each next one after an AttemptStart."""
        job = self._visible(principal, job_id, Action.logs)
        if job.state is JobState.queued:
            if not wait:
                yield self._queue.placed(job)
                return
            job = await self._queue.left(job.id) or job
        live = not job.state.finished and wait
        ended_elsewhere = False
        last_seq = 0  # of the output records read so far, whatever their stream
        records = self._journal.job_records(job.log_id, job.unit, job.log_uid, follow=live, invocation=job.invocation)
        # Closed here, not by the garbage collector: it holds a journal reader (and maybe a fast-polling slot).
        async with contextlib.aclosing(records):
            async for record in records:
                if isinstance(record, OutputRecord):
                    last_seq = record.seq
                    if record.seq > after_seq and (streams is None or record.stream in streams):
                        yield Chunk(Stream(record.stream), record.data, record.when_usec, record.seq)
                elif isinstance(record, StartRecord) and record.attempt > 1 and after_seq <= last_seq:
                    # An attempt's marker comes before its first output record (last_seq + 1): a caller that resumes
                    # after that (sjob run after a Ctrl-C) has had it already.
                    yield AttemptStart(record.attempt, record.when_usec)
                elif isinstance(record, ExitRecord):
                    current = self._ledger.record_exit(job.id, record) or job
                    if _last_exit(current, record):
                        yield current
                        return
                elif (
                    live
                    and isinstance(record, EofRecord)
                    and (ended := await self._reaper.main_exited(job)) is not None
                ):
                    # All output is in and the command exited by itself: answer now rather than after the unit's
                    # ExecStopPost has run and its record has reached us. That record still comes, and is applied.
                    yield ended
                    return
                elif record is None:
                    # A quiet tick. The exit record normally arrives through this reader after all output; give it
                    # one more tick once the job is known to have ended, and stop at once if it ended unknown.
                    refreshed = await self._reaper.refresh(job)
                    if refreshed.state is JobState.unknown or (refreshed.state.finished and ended_elsewhere):
                        yield refreshed
                        return
                    ended_elsewhere = refreshed.state.finished
        yield self._records.get(job.id) or job

    async def status(self, principal: Principal, job_id: str) -> Job:
        job = self._visible(principal, job_id, Action.status)
        if job.state is JobState.queued:
            return self._queue.placed(job)
        if job.state.finished:
            return self._reaper.settled(job)
        return await self._reaper.refresh(job)

    async def stop(
        self, principal: Principal, job_id: str, *, signo: int | None = None, grace_usec: int | None = None
    ) -> Job:
        """Stop the job (SIGTERM to all its processes, SIGKILL after the grace period), or with `signo` only send
        that signal. Returns at once; the job's end comes through follow/status. A finished job is left alone."""
        job = self._visible(principal, job_id, Action.stop)
        if job.state is JobState.queued:
            return self._queue.remove(job, principal.name)
        if not job.state.finished:
            job = await self._reaper.refresh(job)
        if job.state.finished:
            return job
        if not await self._reaper.runs_now(job):
            return job  # a timer's run whose service already runs the next one: this one is over (review of J)
        if signo is not None:
            await self._signal(job, principal, signo)
            return job
        if grace_usec is not None and not 0 <= grace_usec <= MAX_GRACE_USEC:
            raise invalid_argument(
                f"grace period {grace_usec / 1e6:g}s is out of range",
                hint=f"give 0 to {MAX_GRACE_USEC // 1_000_000}s (the job unit's TimeoutStopSec), e.g. --grace 10s",
            )
        log.info("%s: stopped by %s", job.unit, principal)
        job = await self.stop_unit(job, principal.name, lambda n: f"stopped by {principal.name} before attempt {n}")
        if grace_usec is not None and grace_usec < MAX_GRACE_USEC and not job.state.finished:
            self._reaper.kill_later(job.unit, grace_usec, forbid_forks=job.timer is None, run=job.invocation)
        return job

    async def _signal(self, job: Job, principal: Principal, signo: int) -> None:
        """Send `signo` to the job's processes, as systemctl kill does; to its main process alone once the unit is
        stopping: its exit report (ExecStopPost, root's, in the same cgroup) may be running then, and a SIGKILL or
        SIGSTOP meant for the job would lose or hold up the record of how it ended."""
        state = await self._units.unit_state(job.unit)
        stopping = state is not None and state.active_state == "deactivating"
        if state is not None and stopping and state.main_pid == 0:
            raise _ending(job)
        log.info("%s: %s sends signal %d%s", job.unit, principal, signo, " to its main process" if stopping else "")
        try:
            await self._units.kill(job.unit, signo, main_only=stopping)
        except NoSuchProcessError as e:  # its main process went meanwhile
            raise _ending(job) from e

    async def stop_unit(self, job: Job, by: str, why: Callable[[int], str], *, ended_run: str | None = None) -> Job:
        """Stop the job's unit, `by` whom; a retried job stopped while it waits for its next attempt ends here and
        now (nothing runs, so no exit record will come), saying why (given the attempt that will not come).
        `ended_run`: the invocation of an attempt whose exit record came (Reaper.between_attempts)."""
        latest = self._records.get(job.id)  # as it is now: a copy from before an await may be out of date
        if latest is None or latest.state.finished:
            return latest or job
        between = latest.retry is not None and await self._reaper.between_attempts(latest, ended_run)
        latest = self._records.get(job.id)  # again: the await let others apply records
        if latest is None or latest.state.finished:
            return latest or job
        job = dataclasses.replace(latest, stopped_by=by)
        if between:
            # Finished before the unit is stopped: a reader of the attempt's exit record meanwhile finds the job
            # ended, rather than ending it "stopped by ..." without why (review of H, seen on trixie).
            outcome = Outcome(JobState.stopped, job.result or "success", None, None, why(len(job.attempts or []) + 1))
            job = self._ledger.finish(job, outcome, now_usec())
        else:
            self._records.update(job)
        try:
            await self._units.stop(job.unit)
        except SjobError as e:
            if e.code is not ErrorCode.NoSuchJob:
                raise
            if between:
                return job  # ended above
            # systemd has no such unit: not made yet (the job is starting), or gone already (it ended, systemd
            # collected it, and its end is on its way or is to be taken from the service manager's log: nobody
            # stopped it). Seen in CI: "no job with id ..." for a job `sjob list --running` had just shown.
            current = self._records.get(job.id) or job  # as it is now: its end may have been recorded meanwhile
            if not current.state.finished and current.stopped_by == by:
                current = dataclasses.replace(current, stopped_by=latest.stopped_by)
                self._records.update(current)
            if current.state is JobState.starting:
                raise SjobError(
                    ErrorCode.Busy,
                    f"job {job.id} is starting: systemd has not made its unit yet, so there is nothing to stop",
                    hint=f"stop it again in a moment: sjob stop {job.id}",
                ) from e
            log.info("%s: already gone; its end is being recorded", job.unit)
            return current
        if between:
            self._reaper.collect_later(job.unit)  # stopped in stop-post, a unit may end "failed": reset it
        return job

    async def stop_run(self, run: Job, by: str) -> None:
        """Kill a timer's run at once (SIGTERM, then SIGKILL with no grace period), if its service still runs that
        run (not the next): for a run the policy no longer allows, which a trap must not keep alive."""
        if await self._reaper.runs_now(run):
            log.info("%s: run %s stopped by %s", run.unit, run.id, by)
            run = await self.stop_unit(run, by, lambda n: f"stopped by {by}")
            if not run.state.finished:
                self._reaper.kill_later(run.unit, 0, forbid_forks=False, run=run.invocation)

    def _attempt_ended(self, job: Job) -> None:
        """A retried job's attempt has ended and systemd is to start another: not if the token whose bearer
        started the job has been revoked or has expired since (review of J: a token's retries outlived it)."""
        if job.token_id is None:
            return
        try:
            problem = self._access.token_id_problem(job.token_id, now_usec())
        except Exception:  # the token store unreadable: never the exit watcher's end; the retry goes ahead
            log.exception("%s: cannot check its token %s before its next attempt", job.unit, job.token_id)
            return
        if problem is None:
            return
        log.info("%s: no more attempts: %s", job.unit, problem)
        # Seen on trixie: the exit record of the attempt came while the unit still ran that ExecStopPost, so the
        # unit did not yet show the wait for the next attempt, and the job ended "stopped by sjobd", without why.
        ended = job.attempts[-1].invocation if job.attempts else None
        stopping = self.stop_unit(job, "sjobd", lambda n: f"no attempt {n}: {problem}", ended_run=ended)
        task = asyncio.create_task(stopping)
        self._tasks.add(task)
        task.add_done_callback(self._retry_stopped)

    def _retry_stopped(self, task: asyncio.Task[Job]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("stopping the retries of a job failed: %s", error)

    def list_jobs(self, principal: Principal, *, everyone: bool = False, running: bool = False) -> list[Job]:
        """The principal's jobs, newest first; with `everyone`, all users' jobs (root and sjob admins)."""
        self.authorize_list(principal, everyone=everyone)
        jobs = self._records.list_jobs(None if everyone else principal.uid)
        if not everyone:  # a token sees only its subject's jobs, not all of its run_as user's
            jobs = [j for j in jobs if owns(principal, Owner(j.uid, j.user))]
        if any(j.state is JobState.queued for j in jobs):
            places = self._queue.positions(None if everyone else principal.uid)
            jobs = [dataclasses.replace(j, position=places.get(j.id)) if j.id in places else j for j in jobs]
        return [j for j in jobs if not j.state.finished] if running else jobs

    def authorize_list(self, principal: Principal, *, everyone: bool) -> None:
        """May the principal list their jobs (and timers), or with `everyone` all users' (root and sjob admins)?"""
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

    async def usage(self, principal: Principal, *, everyone: bool = False) -> list[JobUsage]:
        """What the principal's running jobs (everyone's, for admins) use now, newest first (`sjob top`). Who may
        see which job is decided as for `list_jobs`; a job whose unit is already gone is left out."""

        async def sample(job: Job) -> JobUsage | None:
            used = await self._units.usage(job.unit)
            sampled = time.monotonic_ns() // 1000  # after the reply: the counters are at most this old
            return None if used is None else JobUsage(job, sampled, **dataclasses.asdict(used))

        # All at once: each is two D-Bus round trips (the unit's path, its counters), and `sjob top` asks each second.
        jobs = self.list_jobs(principal, everyone=everyone, running=True)
        return [u for u in await asyncio.gather(*map(sample, jobs)) if u is not None]

    @property
    def profiles(self) -> Profiles:
        """The sandbox profiles in force (a reload replaces them)."""
        return self._profiles

    def set_policy(self, policy: Policy, profiles: Profiles) -> None:
        """Apply a reloaded policy to the requests that follow; running jobs keep what they started with. Queued
        jobs may start now (caps may have risen), each checked against the new policy."""
        self._access.policy = policy
        self._profiles = profiles
        self._queue.resume()

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

    def _visible(self, principal: Principal, job_id: str, action: Action) -> Job:
        """The job, if the principal may do `action` to it; someone else's job is refused as missing."""
        job_id = parse_job_id(job_id)
        job = self._records.get(job_id)
        if job is None:
            raise self._access.refuse(principal, action, no_such_job(job_id), job_id)
        self._access.authorize(principal, action, job_id=job_id, owner=Owner(job.uid, job.user))
        return job


def _last_exit(job: Job, record: ExitRecord) -> bool:
    """Whether the job has ended with this exit record: a retried job's earlier attempts' are not its end."""
    if not job.state.finished:
        return False
    return job.retry is None or not job.attempts or record.invocation in ("", job.attempts[-1].invocation)
