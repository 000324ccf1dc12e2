"""Functions (issue G): Python code a configurator deploys under a name, which other users call with their stdin
streamed in and its output streamed back. Every build and every call is a job (sjob-<id>.service, in the job
records, its output in journald), started through the same launcher as `sjob run`'s; this module decides who may
do what with which function, builds and commits versions, and gates calls.

- Deploy (policy action `deploy`): the code is staged, a build job compiles it (and installs its requirements
  into the version's own environment, with the network), and only a build that succeeded becomes the next
  version; anything else changes nothing. A function belongs to its first deployer: only they (and admins) may
  deploy it again, roll it back or remove it.
- Call (policy action `call`, and the function's own allow list: by default only its owner): a job running the
  version's compiled code as a user of its own, charged to the caller, with the function's limits within the
  caller's ceilings. A function one may not call is reported exactly like a missing one.
- At most `concurrency` calls of a function run at once; others wait, at most `queue` of them and for at most
  `queue_wait`, then are refused as busy. The count is the job records', so it holds across a restart of sjobd.
- A call's stdin is a pipe, never the caller's file or socket (the code runs as someone else): `sjob fn call` makes
  one of anything else. The call's forwarder (sjob-shim --relay-input, inside the call's unit) moves the bytes
  from it into the code's stdin and counts them: sjobd never copies a caller's bytes (a TCP socket would block its
  event loop in splice(2): review of G).
- Fairness: while other callers wait, one caller may hold at most half of a function's slots, and wait in the
  queue at most once; every call has a timeout ([functions] timeout unless the deploy set one), so no caller can
  keep a function from everyone else for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from supervisor import fnunits, jobspec, limits
from supervisor.access import Access
from supervisor.audit import AuditEntry
from supervisor.auth import Principal
from supervisor.backends import JobLog, RecordStore, UnitManager
from supervisor.errors import ErrorCode, SjobError, invalid_argument, no_such_function
from supervisor.fnprotocol import (
    MAX_CODE,
    MAX_REQUIREMENTS,
    Deployed,
    Function,
    FunctionCall,
    FunctionSettings,
    FunctionVersion,
    check_settings,
    parse_name,
    parse_reference,
)
from supervisor.fnstore import FunctionStore, Staging
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger, now_usec
from supervisor.logformat import OutputRecord
from supervisor.policy import Action, Rule, is_admin
from supervisor.profiles import Profiles
from supervisor.properties import ShimCommand
from supervisor.protocol import Input, Job, JobState, Limits, unit_for

log = logging.getLogger(__name__)

CALL_PROFILE = "function"
BUILD_PROFILE = "function-build"  # with requirements: pip needs the network
SETTLE_TRIES = 150  # a build's unit must be gone before its output is sealed (0.2 s apart: 30 s)
FAILURE_TAIL = 20  # lines of a failed build's output quoted in the error
EVERYONE = "*"


class FunctionService:
    def __init__(
        self,
        store: FunctionStore,
        units: UnitManager,
        journal: JobLog,
        records: RecordStore,
        ledger: Ledger,
        launcher: Launcher,
        shim: ShimCommand,
        access: Access,
        profiles: Callable[[], Profiles],
    ) -> None:
        self._store = store
        self._units = units
        self._journal = journal
        self._records = records
        self._ledger = ledger
        self._launcher = launcher
        self._shim = shim
        self._access = access
        self._profiles = profiles  # those in force: a reload applies to the next build or call
        self._deploying: dict[str, asyncio.Lock] = {}  # one deploy of a function at a time
        self._gates: dict[str, _Gate] = {}
        ledger.on_end(self._ended)

    # --- deploying -----------------------------------------------------------------------------------------------

    async def deploy(
        self, principal: Principal, name: str, code: str, requirements: str | None, settings: FunctionSettings
    ) -> Deployed:
        name = parse_name(name)
        settings = check_settings(settings)
        _check_source(code, requirements)
        rule = self._decide(principal, Action.deploy, name)
        existing = self._store.get(name)
        if existing is not None and not self._manages(principal, existing):
            raise self._refuse(principal, Action.deploy, name, _not_yours(existing))
        try:
            if settings.limits is not None:
                limits.check(settings.limits, rule.limits)  # refused above the deployer's ceilings
            profile = self._profiles().get(BUILD_PROFILE if requirements else CALL_PROFILE)
        except SjobError as e:
            raise self._refuse(principal, Action.deploy, name, e) from None
        build_limits = limits.check(Limits(), rule.limits)
        policy = self._access.policy
        timeout = min(
            policy.functions.build_timeout_usec, build_limits.timeout_usec or policy.functions.build_timeout_usec
        )
        build_limits = dataclasses.replace(build_limits, timeout_usec=timeout)
        async with self._deploying.setdefault(name, asyncio.Lock()):
            # Again, now that no other deploy of this name runs: the first deploy of a name may have committed
            # while this one waited, and the function is then its deployer's (review of G: a second deployer
            # waiting behind the first's build took the function over).
            existing = self._store.get(name)
            if existing is not None and not self._manages(principal, existing):
                raise self._refuse(principal, Action.deploy, name, _not_yours(existing))
            job_id = self._launcher.new_id()
            staging = self._store.stage(name, job_id, code, requirements)
            try:
                job = Job(
                    id=job_id,
                    unit=unit_for(job_id),
                    state=JobState.starting,
                    uid=principal.uid,
                    user=principal.name,
                    argv=["sjob-build", name],
                    cwd=fnunits.SCRATCH,
                    created_usec=now_usec(),
                    limits=build_limits,
                    profile=profile.name,
                    dynamic=True,
                )
                self._launcher.record(job)
                self._audit(principal, Action.deploy, True, f"policy rule {rule.name!r}, building", name, job_id=job_id)
                unit = fnunits.build_unit(
                    job.unit,
                    job_id,
                    principal,
                    str(staging.src),
                    str(staging.out),
                    policy.functions,
                    build_limits,
                    profile,
                    self._shim,
                    policy.output,
                )
                job = await self._launcher.start(job, unit)
                built = await self._ledger.ended(job_id)
                await self._settled(job.unit)  # none of the build's processes may still write its output
                if built.state is not JobState.exited:
                    raise await self._build_failed(built, name)
                await asyncio.to_thread(self._store.take_build, staging, fnunits.BUILT)
                function, version = self._store.commit(
                    name,
                    staging,
                    owner=principal.name,
                    owner_uid=principal.uid,
                    deployed_by=principal.name,
                    build_job=job_id,
                    settings=settings,
                    default_concurrency=policy.functions.concurrency,
                    now_usec=now_usec(),
                )
            except SjobError as e:
                self._audit(principal, Action.deploy, False, e.message, name)
                raise
            finally:
                self._store.discard(staging)
        self._audit(principal, Action.deploy, True, "deployed", name, version.version, job_id)
        return Deployed(self._with_running(function), version)

    async def _settled(self, unit: str) -> None:
        for _ in range(SETTLE_TRIES):
            state = await self._units.unit_state(unit)
            if state is None or state.active_state in ("inactive", "failed"):
                return
            await asyncio.sleep(0.2)
        raise SjobError(ErrorCode.BuildFailed, f"the build {unit} did not end", hint=f"systemctl status {unit}")

    async def _build_failed(self, job: Job, name: str) -> SjobError:
        lines: list[bytes] = []
        async for record in self._journal.job_records(job.id, job.unit, None, follow=False):
            if isinstance(record, OutputRecord):
                lines = (lines + record.data.splitlines())[-FAILURE_TAIL:]
        tail = "".join(f"\n  | {line.decode('utf-8', 'replace')}" for line in lines)
        if job.exit_status == fnunits.EXIT_DOES_NOT_COMPILE:
            why = "does not compile"
        else:
            why = f"failed ({job.message or f'exit status {job.exit_status}'})"
        return SjobError(
            ErrorCode.BuildFailed,
            f"the build of {name} {why}; nothing was deployed{':' if tail else ''}{tail}",
            hint=f"'sjob logs {job.id}' shows the whole build",
        )

    # --- calling -------------------------------------------------------------------------------------------------

    async def call(
        self,
        principal: Principal,
        reference: str,
        args: Sequence[str],
        stdin: int | None,
        stdin_kind: Input | None = None,
    ) -> Job:
        """Start a call of the function (its current version, or `NAME@VERSION`); the caller follows it as a job.
        `stdin` (the caller's descriptor, checked: of `stdin_kind`) must be a pipe; the call's unit gets it."""
        name, pinned = parse_reference(reference)
        args = _check_args(args)
        rule = self._decide(principal, Action.call, name)
        function = self._store.get(name)
        if function is None or not self._may_call(principal, function):
            raise self._refuse(principal, Action.call, name, no_such_function(name))
        number = pinned or function.version
        version = self._store.version(name, number)
        if version is None:
            raise self._refuse(
                principal,
                Action.call,
                name,
                SjobError(
                    ErrorCode.NoSuchFunction,
                    f"{name} has no version {number}",
                    hint=f"'sjob fn versions {name}' lists them",
                ),
            )
        if stdin is not None and stdin_kind is not Input.pipe:
            raise self._refuse(
                principal,
                Action.call,
                name,
                invalid_argument(
                    "a function's stdin must be a pipe",
                    hint="'sjob fn call' makes one of a file, a socket or a terminal",
                ),
            )
        wanted = function.limits or Limits()
        if wanted.timeout_usec is None:
            wanted = dataclasses.replace(wanted, timeout_usec=self._access.policy.functions.timeout_usec)
        try:
            call_limits = limits.check(wanted, rule.limits)
            profile = self._profiles().get(CALL_PROFILE)
            running = len(self._records.unfinished(principal.uid))
            if rule.max_jobs is not None and running >= rule.max_jobs:
                raise _too_many(running, rule)
        except SjobError as e:
            raise self._refuse(principal, Action.call, name, e) from None
        gate = self._gates.setdefault(name, _Gate())
        policy = self._access.policy.functions
        share = max(1, function.concurrency // 2)

        def free() -> bool:
            running = self._records.running_calls(name)
            mine = self._records.running_calls(name, user=principal.name)
            return running < function.concurrency and (mine < share or not gate.others_waiting(principal.name))

        async with gate.slot(free, principal.name, policy.queue, policy.queue_wait_usec / 1e6) as admitted:
            if not admitted:
                raise self._refuse(principal, Action.call, name, _busy(name, function.concurrency), version=number)
            running = len(self._records.unfinished(principal.uid))
            if rule.max_jobs is not None and running >= rule.max_jobs:  # again: a call may have waited
                raise self._refuse(principal, Action.call, name, _too_many(running, rule), version=number)
            job_id = self._launcher.new_id()
            job = Job(
                id=job_id,
                unit=unit_for(job_id),
                state=JobState.starting,
                uid=principal.uid,
                user=principal.name,
                argv=[f"{name}@{number}", *args],
                cwd=fnunits.SCRATCH,
                created_usec=now_usec(),
                limits=call_limits,
                profile=profile.name,
                input=Input.pipe if stdin is not None else None,
                function=name,
                version=number,
                dynamic=True,
            )
            self._launcher.record(job)  # counted as running from here: the slot is taken
        self._audit(principal, Action.call, True, f"policy rule {rule.name!r}", name, number, job_id)
        unit = fnunits.call_unit(
            job.unit,
            job_id,
            principal,
            name,
            number,
            str(self._store.version_dir(name, number)),
            version.requirements,
            args,
            self._access.policy.functions,
            call_limits,
            profile,
            self._shim,
            self._access.policy.output,
            stdin,
        )
        return await self._launcher.start(job, unit)

    def _ended(self, job: Job) -> None:
        """A job ended: a function's call frees its slot, and its output is counted."""
        if job.function is None:
            return
        if (gate := self._gates.get(job.function)) is not None:
            gate.wake()
        if job.bytes_out is None:
            with contextlib.suppress(SjobError, OSError):
                if (eof := self._journal.find_eof(job.id, job.unit, job.log_uid)) is not None:
                    self._records.set_io(job.id, bytes_in=eof.bytes_in, bytes_out=eof.bytes)

    # --- looking and managing ------------------------------------------------------------------------------------

    def list_functions(self, principal: Principal) -> list[Function]:
        self._access.authorize(principal, Action.call)
        return [self._with_running(f) for f in self._store.list_functions() if self._sees(principal, f)]

    def show(self, principal: Principal, name: str) -> Function:
        return self._with_running(self._visible(principal, parse_name(name)))

    def versions(self, principal: Principal, name: str) -> list[FunctionVersion]:
        function = self._visible(principal, parse_name(name))
        return self._store.versions(function.name)

    def calls(self, principal: Principal, name: str, limit: int = 100) -> list[FunctionCall]:
        """The function's calls, newest first: all of them for its owner and admins, one's own for callers."""
        function = self._visible(principal, parse_name(name))
        everyone = self._manages(principal, function)
        jobs = self._records.calls(
            function.name,
            uid=None if everyone else principal.uid,
            limit=max(1, min(limit, 1000)),
            since_usec=function.created_usec,  # not the calls of an earlier function of the same name
        )
        if not everyone:
            jobs = [j for j in jobs if j.user == principal.name]
        return [_call_of(j) for j in jobs]

    def rollback(self, principal: Principal, name: str, version: int) -> Function:
        name = self._managed(principal, name).name
        if self._store.version(name, version) is None:
            raise self._refuse(
                principal,
                Action.deploy,
                name,
                invalid_argument(f"{name} has no version {version}", hint=f"'sjob fn versions {name}' lists them"),
            )
        self._store.set_current(name, version, now_usec())
        self._audit(principal, Action.deploy, True, f"rolled back to version {version}", name, version)
        return self.show(principal, name)

    async def remove(self, principal: Principal, name: str, *, force: bool = False) -> None:
        name = self._managed(principal, name).name
        running = [j for j in self._records.unfinished() if j.function == name]
        if running and not force:
            raise self._refuse(
                principal,
                Action.deploy,
                name,
                SjobError(
                    ErrorCode.Busy,
                    f"{len(running)} calls of {name} are running; it was not removed",
                    hint=f"wait for them, or 'sjob fn rm --force {name}' stops them first",
                ),
            )
        for job in running:
            with contextlib.suppress(SjobError):
                await self._units.stop(job.unit)
        self._store.remove(name)
        self._audit(
            principal, Action.deploy, True, "removed" + (f", {len(running)} calls stopped" if running else ""), name
        )

    # --- who may ---------------------------------------------------------------------------------------------------

    def _decide(self, principal: Principal, action: Action, name: str) -> Rule:
        """The rule that allows `principal` to `action` functions; refused (audited) if none does."""
        decision = self._access.decide(principal, action)
        if not decision.allowed or decision.rule is None:
            raise self._refuse(
                principal,
                action,
                name,
                SjobError(
                    ErrorCode.PermissionDenied,
                    f"{principal.name} may not {action.value} functions: {decision.reason}",
                    hint="ask an administrator to grant it in /etc/sjob/policy.toml",
                ),
            )
        return decision.rule

    def _managed(self, principal: Principal, name: str) -> Function:
        """The function `name`, if `principal` may manage it (deploy it again, roll it back, remove it): its owner
        or an admin, with the policy's `deploy`. Refused (audited) otherwise; as missing to those who cannot see it."""
        name = parse_name(name)
        self._decide(principal, Action.deploy, name)
        function = self._store.get(name)
        if function is None or not self._sees(principal, function):
            raise self._refuse(principal, Action.deploy, name, no_such_function(name))
        if not self._manages(principal, function):
            raise self._refuse(principal, Action.deploy, name, _not_yours(function))
        return function

    def _manages(self, principal: Principal, function: Function) -> bool:
        own = principal.token is None and principal.uid == function.owner_uid
        return own or principal.name == function.owner or is_admin(self._access.policy, principal)

    def _may_call(self, principal: Principal, function: Function) -> bool:
        if self._manages(principal, function):
            return True
        grants = set(function.allow)
        if principal.token is not None:  # a token's bearer is not its run_as user: only "*" reaches it
            return EVERYONE in grants
        return bool(grants & {EVERYONE, principal.user} or grants & {f"@{g}" for g in principal.groups})

    def _sees(self, principal: Principal, function: Function) -> bool:
        return self._may_call(principal, function)

    def _visible(self, principal: Principal, name: str) -> Function:
        self._access.authorize(principal, Action.call)
        function = self._store.get(name)
        if function is None or not self._sees(principal, function):
            raise self._refuse(principal, Action.call, name, no_such_function(name))
        return function

    def _with_running(self, function: Function) -> Function:
        return dataclasses.replace(function, running=self._records.running_calls(function.name))

    def _refuse(
        self, principal: Principal, action: Action, name: str, error: SjobError, version: int | None = None
    ) -> SjobError:
        self._audit(principal, action, False, error.message, name, version)
        return error

    def _audit(
        self,
        principal: Principal,
        action: Action,
        allowed: bool,
        reason: str,
        name: str,
        version: int | None = None,
        job_id: str | None = None,
    ) -> None:
        self._access.audit(AuditEntry(principal, action.value, allowed, reason, job_id, function=name, version=version))

    async def close(self) -> None:
        """Nothing of its own runs in the background (calls and builds are jobs)."""


class _Gate:
    """A function's concurrency: calls are admitted while `free()` says so; others wait, at most `queue` of them
    (one per caller) and for at most `wait` seconds, woken whenever one of its calls ends."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._waiting: dict[str, int] = {}  # caller -> calls of theirs waiting

    def others_waiting(self, caller: str) -> bool:
        return any(n for who, n in self._waiting.items() if who != caller)

    def wake(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    @contextlib.asynccontextmanager
    async def slot(self, free: Callable[[], bool], caller: str, queue: int, wait: float) -> AsyncIterator[bool]:
        """Yields True once admitted (the caller must record its call before leaving), False if busy."""
        async with self._changed:
            if free():
                yield True
                return
            if sum(self._waiting.values()) >= queue or self._waiting.get(caller, 0) >= 1:
                yield False
                return
            self._waiting[caller] = self._waiting.get(caller, 0) + 1
            try:
                async with asyncio.timeout(wait):  # not wait_for, which can swallow a cancellation (3.11)
                    admitted = await self._changed.wait_for(free)
            except TimeoutError:
                admitted = False
            finally:
                if (left := self._waiting.pop(caller) - 1) > 0:
                    self._waiting[caller] = left
            yield bool(admitted)


def _check_source(code: str, requirements: str | None) -> None:
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE:
        raise invalid_argument(f"the code is larger than {MAX_CODE // 1024} KiB")
    if "\0" in code or any(0xD800 <= ord(c) <= 0xDFFF for c in code):
        raise invalid_argument("the code is not text (a NUL byte, or bytes that are not UTF-8)")
    if not code.strip():
        raise invalid_argument("the code is empty")
    if requirements is not None:
        if len(requirements.encode("utf-8", "surrogatepass")) > MAX_REQUIREMENTS:
            raise invalid_argument(f"the requirements are larger than {MAX_REQUIREMENTS // 1024} KiB")
        if any(not line.isprintable() for line in requirements.splitlines()):
            raise invalid_argument("the requirements file has control characters", hint="one requirement per line")


def _check_args(args: Sequence[str]) -> list[str]:
    return jobspec.validate_arguments(list(args), "argument {} of the call") if args else []


def _too_many(running: int, rule: Rule) -> SjobError:
    return SjobError(
        ErrorCode.TooManyJobs,
        f"you have {running} jobs running; policy rule {rule.name!r} allows at most {rule.max_jobs} at once",
        hint="wait for one to end, or stop one ('sjob list --running')",
    )


def _busy(name: str, concurrency: int) -> SjobError:
    return SjobError(
        ErrorCode.Busy,
        f"{name} is busy: {concurrency} calls are running and the queue is full or the wait is over",
        hint="try again in a moment",
    )


def _not_yours(function: Function) -> SjobError:
    return SjobError(
        ErrorCode.PermissionDenied,
        f"the function {function.name} is {function.owner}'s",
        hint="only its owner (or an sjob admin) may deploy, roll back or remove it; pick another name",
    )


def _call_of(job: Job) -> FunctionCall:
    return FunctionCall(
        job=job.id,
        caller=job.user,
        version=job.version or 0,
        state=job.state.value,
        created_usec=job.created_usec,
        started_usec=job.started_usec,
        ended_usec=job.ended_usec,
        exit_status=job.exit_status,
        signal=job.signal,
        result=job.result,
        bytes_in=job.bytes_in,
        bytes_out=job.bytes_out,
    )


__all__ = ["FunctionService", "Staging"]
