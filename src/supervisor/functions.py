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
- The caller's stdin is copied into the call by sjobd (splice, no copy through Python's memory), since the code
  runs as someone else: it gets a pipe, never the caller's file or socket, and sjobd counts the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

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
        self._pumps: dict[str, asyncio.Task[None]] = {}  # call -> the copy of its caller's stdin into it
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
        tail = "\n".join(line.decode("utf-8", "replace") for line in lines)
        why = "does not compile" if job.exit_status == fnunits.EXIT_DOES_NOT_COMPILE else f"failed ({job.message})"
        return SjobError(
            ErrorCode.BuildFailed,
            f"the build of {name} {why}; nothing was deployed:\n{tail}" if tail else f"the build of {name} {why}",
            hint=f"'sjob logs {job.id}' shows the whole build",
        )

    # --- calling -------------------------------------------------------------------------------------------------

    async def call(self, principal: Principal, reference: str, args: Sequence[str], stdin: int | None) -> Job:
        """Start a call of the function (its current version, or `NAME@VERSION`); the caller follows it as a job.
        `stdin` (the caller's descriptor, already checked) is copied into the call; sjobd keeps its own copy."""
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
        try:
            call_limits = limits.check(function.limits or Limits(), rule.limits)
            profile = self._profiles().get(CALL_PROFILE)
            running = len(self._records.unfinished(principal.uid))
            if rule.max_jobs is not None and running >= rule.max_jobs:
                raise SjobError(
                    ErrorCode.TooManyJobs,
                    f"you have {running} jobs running; policy rule {rule.name!r} allows at most"
                    f" {rule.max_jobs} at once",
                    hint="wait for one to end, or stop one ('sjob list --running')",
                )
        except SjobError as e:
            raise self._refuse(principal, Action.call, name, e) from None
        gate = self._gates.setdefault(name, _Gate())
        policy = self._access.policy.functions
        async with gate.slot(
            lambda: self._records.running_calls(name) < function.concurrency,
            policy.queue,
            policy.queue_wait_usec / 1e6,
            name,
        ) as admitted:
            if not admitted:
                raise self._refuse(principal, Action.call, name, _busy(name, function.concurrency), version=number)
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
        job_end, sjobd_end = os.pipe2(os.O_CLOEXEC) if stdin is not None else (None, None)
        try:
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
                job_end,
            )
            job = await self._launcher.start(job, unit)
        except BaseException:
            if sjobd_end is not None:
                os.close(sjobd_end)
            raise
        finally:
            if job_end is not None:
                os.close(job_end)  # the unit has its own copy
        if stdin is not None and sjobd_end is not None:
            self._copy_in(job_id, os.dup(stdin), sjobd_end)
        return job

    def _copy_in(self, job_id: str, source: int, into: int) -> None:
        task = asyncio.create_task(_copy(source, into, lambda n: self._records.set_io(job_id, bytes_in=n)))
        self._pumps[job_id] = task
        task.add_done_callback(lambda _: self._pumps.pop(job_id, None))

    def _ended(self, job: Job) -> None:
        """A job ended: a function's call frees its slot, and its output is counted."""
        if job.function is None:
            return
        if (pump := self._pumps.get(job.id)) is not None:
            pump.cancel()  # nothing reads the call's stdin any more
        if (gate := self._gates.get(job.function)) is not None:
            gate.wake()
        if job.bytes_out is None:
            with contextlib.suppress(SjobError, OSError):
                if (eof := self._journal.find_eof(job.id, job.unit, job.log_uid)) is not None and eof.bytes is not None:
                    self._records.set_io(job.id, bytes_out=eof.bytes)

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
            function.name, uid=None if everyone else principal.uid, limit=max(1, min(limit, 1000))
        )
        if not everyone:
            jobs = [j for j in jobs if j.user == principal.name]
        return [_call_of(j) for j in jobs]

    def rollback(self, principal: Principal, name: str, version: int) -> Function:
        name = parse_name(name)
        self._decide(principal, Action.deploy, name)
        function = self._store.get(name)
        if function is None or not self._sees(principal, function):
            raise self._refuse(principal, Action.deploy, name, no_such_function(name))
        if not self._manages(principal, function):
            raise self._refuse(principal, Action.deploy, name, _not_yours(function))
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
        name = parse_name(name)
        self._decide(principal, Action.deploy, name)
        function = self._store.get(name)
        if function is None or not self._sees(principal, function):
            raise self._refuse(principal, Action.deploy, name, no_such_function(name))
        if not self._manages(principal, function):
            raise self._refuse(principal, Action.deploy, name, _not_yours(function))
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
        pumps = list(self._pumps.values())
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


class _Gate:
    """A function's concurrency: calls are admitted while `free()` says so; others wait, at most `queue` of them
    and for at most `wait` seconds, woken whenever one of its calls ends."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._waiting = 0

    def wake(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    @contextlib.asynccontextmanager
    async def slot(self, free: Callable[[], bool], queue: int, wait: float, name: str):  # type: ignore[no-untyped-def]
        """Yields True once admitted (the caller must record its call before leaving), False if busy."""
        async with self._changed:
            if free():
                yield True
                return
            if self._waiting >= queue:
                yield False
                return
            self._waiting += 1
            try:
                admitted = await asyncio.wait_for(self._changed.wait_for(free), wait)
            except TimeoutError:
                admitted = False
            finally:
                self._waiting -= 1
            yield bool(admitted)


async def _copy(source: int, into: int, counted: Callable[[int], None]) -> None:
    """Copy `source` (the caller's pipe, file or socket) into `into` (the call's stdin pipe) until its end or the
    call's, with splice(2): the bytes move inside the kernel, and a call that never reads blocks nothing but this."""
    loop = asyncio.get_running_loop()
    total = 0
    regular = os.path.isfile(f"/proc/self/fd/{source}")  # epoll cannot wait on a regular file: it is always ready
    os.set_blocking(into, False)
    try:
        while True:
            try:
                n = os.splice(source, into, 1 << 20, flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
            except BlockingIOError:
                await _ready(loop, into, writable=True)
                if not regular:
                    await _ready(loop, source, writable=False)
                continue
            except (BrokenPipeError, ConnectionResetError):
                break  # the call has gone, or closed its stdin
            except OSError as e:
                log.info("copying a call's stdin stopped: %s", e)
                break
            if n == 0:
                break
            total += n
    finally:
        os.close(source)
        os.close(into)  # the call's EOF
        with contextlib.suppress(SjobError):
            counted(total)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, writable: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    add(fd, ready)
    try:
        await future
    finally:
        remove(fd)


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
