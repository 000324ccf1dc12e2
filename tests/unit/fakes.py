"""Hand-written fakes behind the Protocols of supervisor.backends, for host tests without systemd or journald.

`FakeUnits` "starts" a unit by running its command locally (as the test user) and feeding its output and exit
into a `FakeJobLog`, the way the shim and ExecStopPost feed journald; `start_result` and `states` let a test script
systemd's answers instead. Like systemd it runs a unit with Restart= again (each run a new invocation, up to its
StartLimitBurst=), and a timer's service at the timer's times (OnActiveSec=, OnUnitActiveSec=); delays are scaled
by `time_scale`, so a test's seconds pass in milliseconds. Its log records what journald's readers would deliver:
start records numbered by attempt, output numbered on across a unit's runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import os
import signal
import time
import typing
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path

from supervisor.access import Access
from supervisor.audit import AuditEntry
from supervisor.errors import ErrorCode, NoSuchProcessError, SjobError
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord, QuotaRecord, Record, StartRecord, UnitEvent
from supervisor.policy import Policy
from supervisor.policyfile import parse_policy
from supervisor.profiles import Profiles
from supervisor.profiles import load as load_profiles
from supervisor.properties import PassedFd, UnitProperties
from supervisor.units import TimerUnitState, UnitState, UnitUsage


class FakeJobLog:
    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = {}
        self.invocations: dict[str, list[str]] = {}  # job id -> the run each of its records came from ("": any)
        self.exit_queue: asyncio.Queue[tuple[str, ExitRecord]] = asyncio.Queue()
        self.events: list[UnitEvent] = []  # start and exit records of every unit, for `runs`
        self.changed = asyncio.Event()
        self.open_readers = 0
        self.manager_exits: dict[str, ExitRecord] = {}  # unit -> what PID 1 logged of its end

    def add(self, job_id: str, record: Record, invocation: str = "", uid: int = 1000) -> None:
        if isinstance(record, OutputRecord | ExitRecord | StartRecord) and not record.when_usec:
            record = dataclasses.replace(record, when_usec=time.time_ns() // 1000)  # as journald stamps entries
        if isinstance(record, ExitRecord | StartRecord) and invocation and not record.invocation:
            record = dataclasses.replace(record, invocation=invocation)
        self.records.setdefault(job_id, []).append(record)
        self.invocations.setdefault(job_id, []).append(invocation)
        if isinstance(record, ExitRecord):
            self.exit_queue.put_nowait((job_id, record))
        if isinstance(record, ExitRecord | StartRecord):
            self.events.append(
                UnitEvent(f"sjob-{job_id}.service", 0 if isinstance(record, ExitRecord) else uid, record)
            )
        self.changed.set()

    def _of(self, job_id: str, invocation: str | None) -> list[Record]:
        runs = self.invocations.get(job_id, [])
        return [r for r, run in zip(self.records.get(job_id, []), runs, strict=True) if invocation in (None, run)]

    async def job_records(
        self, job_id: str, unit: str, owner_uid: int | None, *, follow: bool, invocation: str | None = None
    ) -> AsyncGenerator[Record | None, None]:
        self.open_readers += 1
        try:
            seen = 0
            while True:
                records = self._of(job_id, invocation)
                while seen < len(records):
                    seen += 1
                    yield records[seen - 1]
                if not follow:
                    return
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.2)
                except TimeoutError:
                    yield None
        finally:
            self.open_readers -= 1

    async def exits(self, since_usec: int) -> AsyncIterator[tuple[str, ExitRecord]]:
        while True:
            yield await self.exit_queue.get()

    async def runs(self, since_usec: int, wanted: Callable[[str], bool]) -> AsyncIterator[UnitEvent]:
        seen = 0
        while True:
            while seen < len(self.events):
                event = self.events[seen]
                seen += 1
                if event.record.when_usec >= since_usec and wanted(event.unit):
                    yield event
            # A poll, not wait_for(changed.wait()): on Python 3.11, wait_for can swallow a cancellation that comes
            # as the event is set, and the fake's events come often.
            await asyncio.sleep(0.01)

    def find_quota(
        self, job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None
    ) -> QuotaRecord | None:
        return next((r for r in self._of(job_id, invocation) if isinstance(r, QuotaRecord)), None)

    def find_eof(
        self, job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None
    ) -> EofRecord | None:
        return next((r for r in self._of(job_id, invocation) if isinstance(r, EofRecord)), None)

    def find_manager_exit(self, unit: str, invocation: str | None = None) -> ExitRecord | None:
        return self.manager_exits.get(unit)

    def find_exits(self, job_id: str, unit: str, invocation: str | None = None) -> list[ExitRecord]:
        return [r for r in self._of(job_id, invocation) if isinstance(r, ExitRecord)]


@dataclasses.dataclass
class FakeUnits:
    log: FakeJobLog
    start_result: str = "done"
    run_commands: bool = True
    started: list[UnitProperties] = dataclasses.field(default_factory=list)
    property_sets: list[UnitProperties] = dataclasses.field(default_factory=list)  # set_properties calls
    states: dict[str, UnitState] = dataclasses.field(default_factory=dict)
    reset: list[str] = dataclasses.field(default_factory=list)
    stopped: list[str] = dataclasses.field(default_factory=list)
    signalled: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    processes: dict[str, list[asyncio.subprocess.Process]] = dataclasses.field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    calls: list[str] = dataclasses.field(default_factory=list)  # set_properties and kill, in order
    stdin: dict[str, int | None] = dataclasses.field(default_factory=dict)  # unit -> its copy of a passed stdin
    time_scale: float = 0.01  # systemd's delays (RestartUSec=, a timer's times) pass this much faster
    stop_post: float = 0.0  # seconds a run's unit stays in stop-post after its exit record (its ExecStopPost ends)
    stop_delay: float = 0.0  # seconds a stop takes to be answered
    refuse_gone: bool = False  # StopUnit of a unit systemd no longer has fails, as systemd's does (NoSuchUnit)
    seq: dict[str, int] = dataclasses.field(default_factory=dict)  # job id -> its last output record's number
    timers: dict[str, TimerUnitState] = dataclasses.field(default_factory=dict)
    timer_tasks: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    usages: dict[str, UnitUsage] = dataclasses.field(default_factory=dict)  # unit -> its accounting now
    ended: Callable[[str], None] = lambda unit: None  # told of a unit that is garbage-collected (watch_ends)

    def watch_ends(self, ended: Callable[[str], None]) -> None:
        self.ended = ended

    async def set_properties(self, unit: UnitProperties) -> None:
        self.property_sets.append(unit)
        self.calls.append("set " + " ".join(f"{k}={v}" for k, v in unit.properties))

    async def start_transient(self, unit: UnitProperties, aux: Sequence[UnitProperties] = ()) -> str:
        self.started.append(unit)
        if unit.name.endswith(".timer"):
            return self._start_timer(unit, aux)
        # systemd takes its own copy of a passed descriptor with the call, as the kernel does with SCM_RIGHTS.
        stdin = (
            unit.get("StandardInputFileDescriptor") if "StandardInputFileDescriptor" in dict(unit.properties) else None
        )
        self.stdin[unit.name] = os.dup(stdin.fd) if isinstance(stdin, PassedFd) else None
        if self.start_result == "done" and self.run_commands:
            self.states[unit.name] = UnitState(unit.name, "loaded", "active", "running", "success", 1, 0, 0, 0, 0, "")
            self._in_background(self._attempts(unit))
        return self.start_result

    def _in_background(self, work: typing.Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _attempts(self, unit: UnitProperties) -> None:
        """Run the unit, and again as its Restart= says (up to StartLimitBurst= runs in all), as systemd would."""
        props = dict(unit.properties)
        restart = str(props.get("Restart", "no"))
        burst = int(typing.cast(int, props.get("StartLimitBurst", 1))) if restart != "no" else 1
        delay = int(typing.cast(int, props.get("RestartUSec", 0))) / 1e6 * self.time_scale
        for attempt in range(1, burst + 1):
            record = await self._run(unit, attempt)
            run = self.states[unit.name].invocation_id if unit.name in self.states else ""
            if self.stop_post:
                self.states[unit.name] = UnitState(
                    unit.name,
                    "loaded",
                    "deactivating",
                    "stop-post",
                    record.result,
                    0,
                    1,
                    0,
                    0,
                    0,
                    "",
                    invocation_id=run,
                )
                await asyncio.sleep(self.stop_post)
            again = restart == "always" or (restart == "on-failure" and record.result != "success")
            if not again or attempt == burst or unit.name in self.stopped:
                break
            self.states[unit.name] = UnitState(
                unit.name, "loaded", "activating", "auto-restart", record.result, 0, 1, 0, 0, 0, "", invocation_id=run
            )
            await asyncio.sleep(delay)
            if unit.name in self.stopped:
                break
            self.states[unit.name] = UnitState(unit.name, "loaded", "active", "running", "success", 1, 0, 0, 0, 0, "")
        self.states.pop(unit.name, None)  # garbage-collected, as systemd does with a transient unit
        self.ended(unit.name)

    async def _run(self, unit: UnitProperties, attempt: int = 1) -> ExitRecord:
        _, argv, _ = exec_entry(unit)
        end = argv.index("--")
        job_id, command = argv[end - 1], argv[end + 1 :]
        run = uuid.uuid4().hex  # a new invocation of the unit, as systemd makes for every start
        self.states[unit.name] = UnitState(
            unit.name, "loaded", "active", "running", "success", 1, 0, 0, 0, 0, "", invocation_id=run
        )
        uid = int(str(unit.get("User"))) if "User" in dict(unit.properties) else 61000
        self.log.add(job_id, StartRecord(attempt=attempt), run, uid)
        cwd = str(unit.get("WorkingDirectory"))
        # Bind mounts, as far as a test without namespaces can have them: paths under a bind's target are
        # rewritten to its source (a function's code and build directories).
        props = dict(unit.properties)
        for kind in ("BindReadOnlyPaths", "BindPaths"):
            for source, target, _, _ in typing.cast(list[tuple[str, str, bool, int]], props.get(kind, [])):
                command = [arg.replace(target, source) for arg in command]
        environment = {
            **os.environ,
            **dict(e.split("=", 1) for e in typing.cast(list[str], props.get("Environment", []))),
        }
        stdin = self.stdin.pop(unit.name, None)
        relay = "--relay-input" in argv[:end]  # the shim's forwarder would pass the stdin on, counting it
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE if relay else stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=environment,
                start_new_session=True,
            )
        finally:
            if stdin is not None and not relay:
                os.close(stdin)
        self.processes.setdefault(unit.name, []).append(proc)
        if (state := self.states.get(unit.name)) is not None and state.active_state == "deactivating":
            with contextlib.suppress(ProcessLookupError):  # stopped while it started: systemd's SIGTERM finds it
                os.killpg(proc.pid, signal.SIGTERM)
        relayed = [0]

        async def pass_stdin() -> None:
            assert proc.stdin is not None
            try:
                while stdin is not None and (data := await asyncio.to_thread(os.read, stdin, 65536)):
                    relayed[0] += len(data)
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                proc.stdin.close()
                if stdin is not None:
                    os.close(stdin)

        assert proc.stdout is not None
        assert proc.stderr is not None
        written = [0]

        async def counted(stream: asyncio.StreamReader, name: str) -> None:
            while chunk := await stream.read(65536):
                written[0] += len(chunk)
                self.seq[job_id] = self.seq.get(job_id, 0) + 1  # on across runs, as the journal's reader numbers
                self.log.add(job_id, OutputRecord(self.seq[job_id], name, chunk), run)

        try:
            await asyncio.gather(
                counted(proc.stdout, "stdout"), counted(proc.stderr, "stderr"), *([pass_stdin()] if relay else [])
            )
            self.log.add(job_id, EofRecord(self.seq.get(job_id, 0), written[0], relayed[0] if relay else None), run)
            status = await proc.wait()
        except asyncio.CancelledError:
            # The test is over and its "unit" still runs: end it as systemd would end the unit, and wait until the
            # process is reaped and its pipes are at their end. Only then does asyncio close the process's transport;
            # one left open warns (ResourceWarning, an error here) when it is collected, in whichever test runs next.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.communicate()
            raise
        if status >= 0:
            record = ExitRecord("success" if status == 0 else "exit-code", "exited", status)
        else:  # systemd counts death by SIGTERM, SIGINT, SIGHUP, SIGPIPE as success
            clean = -status in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)
            record = ExitRecord("success" if clean else "signal", "killed", -status)
        self.log.add(job_id, record, run)
        return record

    async def unit_state(self, name: str) -> UnitState | None:
        return self.states.get(name)

    async def timer_state(self, name: str) -> TimerUnitState | None:
        return self.timers.get(name)

    def _start_timer(self, timer: UnitProperties, aux: Sequence[UnitProperties]) -> str:
        (service,) = aux
        props = dict(timer.properties)
        monotonic = dict(typing.cast(list[tuple[str, int]], props.get("TimersMonotonic", [])))
        first, again = monotonic.get("OnActiveSec"), monotonic.get("OnUnitActiveSec")
        now = time.time_ns() // 1000
        self.timers[timer.name] = TimerUnitState(timer.name, "loaded", "active", now + (first or 0), None)

        async def fire() -> None:
            delay = first
            while delay is not None:
                await asyncio.sleep(delay / 1e6 * self.time_scale)
                self.timers[timer.name] = dataclasses.replace(
                    self.timers[timer.name], last_usec=time.time_ns() // 1000, next_usec=None
                )
                self._in_background(self._attempts(service))
                delay = again
            self.timers.pop(timer.name, None)  # RemainAfterElapse=false: gone once it will not fire again

        if first is not None:
            self.timer_tasks[timer.name] = asyncio.create_task(fire())
        return self.start_result

    async def usage(self, name: str) -> UnitUsage | None:
        if name not in self.states:
            return None
        return self.usages.get(name, UnitUsage())

    async def reset_failed(self, name: str) -> None:
        self.reset.append(name)
        self.states.pop(name, None)

    async def stop(self, name: str) -> None:
        if self.stop_delay:
            await asyncio.sleep(self.stop_delay)  # a D-Bus round trip: others may read the journal meanwhile
        if self.refuse_gone and name not in self.states and name not in self.timers:
            raise SjobError(ErrorCode.NoSuchJob, f"Unit {name} not loaded.")
        self.stopped.append(name)
        if (task := self.timer_tasks.pop(name, None)) is not None:
            task.cancel()
            self.timers.pop(name, None)
        if name in self.states:  # waiting for the processes to go, as systemd after its SIGTERM
            self.states[name] = dataclasses.replace(
                self.states[name], active_state="deactivating", sub_state="stop-sigterm"
            )
        self._signal_all(name, signal.SIGTERM)

    async def kill(self, name: str, signo: int, *, main_only: bool = False) -> None:
        self.signalled.append((name, signo))
        self.calls.append(f"kill {'main ' if main_only else ''}{signal.Signals(signo).name}")
        if not main_only:
            self._signal_all(name, signo)
        elif (main := next((p for p in reversed(self.processes.get(name, [])) if p.returncode is None), None)) is None:
            raise NoSuchProcessError("systemd refused KillUnit: No main process to kill")
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(main.pid, signo)

    def _signal_all(self, name: str, signo: int) -> None:
        # Every process of the "unit", as KillMode=control-group does: the job's session here.
        for proc in self.processes.get(name, []):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signo)

    async def list_units(self, pattern: str) -> list[str]:
        return sorted(name for name in [*self.states, *self.timers] if fnmatch.fnmatchcase(name, pattern))

    async def close(self) -> None:
        """End what still runs, as a test ends: kill each "unit's" processes and wait for them, so that no
        subprocess transport is left for the garbage collector to warn about in a later test (warnings are errors
        there: seen as a flaky ResourceWarning in whichever test ran next)."""
        for task in [*self.tasks, *self.timer_tasks.values()]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.timer_tasks.values(), return_exceptions=True)
        for procs in self.processes.values():
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def exec_entry(unit: UnitProperties, key: str = "ExecStartEx") -> tuple[str, list[str], list[str]]:
    """The (path, argv, flags) of a unit's single ExecStartEx= / ExecStopPostEx= entry."""
    ((path, argv, flags),) = typing.cast(list[tuple[str, list[str], list[str]]], unit.get(key))
    return path, argv, flags


def failed_unit(name: str, code: int, status: int, result: str, active: str = "failed") -> UnitState:
    return UnitState(name, "loaded", active, "failed", result, 0, code, status, 0, 0, "1000")


POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"


def shipped_policy() -> tuple[Policy, Profiles]:
    """The policy and profiles sjob ships (policy/), as sjobd loads them."""
    policy = parse_policy((POLICY_DIR / "default.toml").read_text(), "policy/default.toml")
    return policy, load_profiles([POLICY_DIR / "profiles"])


class FakeAudit:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


def shipped_access(audit: FakeAudit | None = None, **kw: typing.Any) -> tuple[Access, Profiles]:
    """An Access over the shipped policy (auditing into `audit`), and the shipped profiles."""
    policy, profiles = shipped_policy()
    return Access(policy, audit or FakeAudit(), **kw), profiles
