"""The one place that talks to systemd: its D-Bus API on the system bus, through dbus-fast.

Only low-level messages with explicit signatures are used (no introspection round trips): property signatures come
from `properties.SIGNATURES`, method signatures are spelled out here as in org.freedesktop.systemd1(5). D-Bus
errors are turned into `SjobError`s in `_check`, and nowhere else.

Starting a unit is synchronous in the way `systemd-run --wait` is: StartTransientUnit only queues a job, so we
wait for the manager's JobRemoved signal for that job and return its result ("done", "failed", ...). The signal
can arrive before the method reply has been handed to us, so results of jobs nobody waits for yet are kept
briefly (`_early`).

A unit of sjob's that stops or goes, whoever made it so, is told to the callback given to `watch_ends`: systemd's
PropertiesChanged signal for a unit whose ActiveState became "inactive" or "failed", and its UnitRemoved. sjobd waits
for these instead of looking at its units now and then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from supervisor.errors import ErrorCode, NoAnswerError, NoSuchProcessError, SjobError
from supervisor.properties import PassedFd, UnitProperties
from supervisor.protocol import parse_job_id, unit_for
from supervisor.units import TimerUnitState, UnitState, UnitUsage

BUS = "org.freedesktop.DBus"
DEST = "org.freedesktop.systemd1"
PATH = "/org/freedesktop/systemd1"
UNIT_PATHS = f"{PATH}/unit"  # a unit's object: its name escaped as in sd_bus_path_encode()
JOB_UNIT_PATHS = f"{UNIT_PATHS}/sjob_2d"  # sjob's units: "sjob-" escaped
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
TIMER = "org.freedesktop.systemd1.Timer"
PROPERTIES = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
NO_SUCH_PROCESS = "org.freedesktop.systemd1.NoSuchProcess"  # KillUnit: no main (or control) process to signal
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"

_EARLY_MAX = 1024
START_TIMEOUT = 120.0  # seconds for systemd's start job of a unit to finish, once queued
# Seconds systemd has to answer a call: sd-bus's default, which systemctl and systemd-run use. Without it, one call
# that is never answered (PID 1 hung) held every later look at a unit, and a start, for ever (review of H).
CALL_TIMEOUT = 25.0


class Systemd:
    """A connection to the service manager."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._early: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._ended: Callable[[str], None] = lambda unit: None

    @classmethod
    async def connect(cls) -> Systemd:
        try:
            # Unix fds: a job's stdin goes to systemd as StandardInputFileDescriptor= (D-Bus type 'h').
            bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        except (OSError, EOFError) as e:
            raise SjobError(
                ErrorCode.SystemdError,
                f"cannot connect to the system bus: {e}",
                hint="sjobd needs systemd as PID 1 and a running D-Bus system bus",
            ) from e
        self = cls(bus)
        bus.add_message_handler(self._on_message)
        for rule in (
            f"type='signal',sender='{DEST}',path='{PATH}',interface='{MANAGER}',member='JobRemoved'",
            f"type='signal',sender='{DEST}',path='{PATH}',interface='{MANAGER}',member='UnitRemoved'",
            # Every unit's: a match cannot name a prefix of an object path, only a whole subtree. arg0 leaves out
            # the Service interface's changes, which come beside the Unit interface's.
            f"type='signal',sender='{DEST}',path_namespace='{UNIT_PATHS}',interface='{PROPERTIES}',"
            f"member='PropertiesChanged',arg0='{UNIT}'",
        ):
            await self._call(BUS, "/org/freedesktop/DBus", BUS, "AddMatch", "s", [rule])
        # Without at least one subscriber the manager emits none of these.
        await self._manager("Subscribe", "", [])
        return self

    def watch_ends(self, ended: Callable[[str], None]) -> None:
        """Have `ended(unit)` called whenever a job's unit stops ("inactive" or "failed", with no job pending) or is
        unloaded. Also at every daemon-reload, which unloads every unit (and loads those that remain again)."""
        self._ended = ended

    async def disconnected(self) -> None:
        """Return once the connection to the system bus is lost: sjobd, which learns of its jobs' ends from
        systemd's signals, must then start again (its unit's Restart=) and catch up."""
        with contextlib.suppress(Exception):  # how it ended does not matter: it did
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._bus.disconnect()

    # --- the calls sjob makes ------------------------------------------------------------------------------

    async def start_transient(self, unit: UnitProperties, aux: Sequence[UnitProperties] = ()) -> str:
        """Start a transient unit and wait until its start job finishes; return the job's result. `aux` are units
        made with it and not started, which it triggers: a timer's service, as `systemd-run --on-calendar` makes
        it (src/run/run.c)."""
        props, fds = _variants(unit)
        others = []
        for extra in aux:
            extra_props, extra_fds = _variants(extra)
            if extra_fds:
                raise ValueError(f"{extra.name}: an auxiliary unit cannot take file descriptors")  # a bug
            others.append([extra.name, extra_props])
        reply = await self._manager("StartTransientUnit", "ssa(sv)a(sa(sv))", [unit.name, "fail", props, others], fds)
        job_path: str = reply.body[0]
        if (result := self._early.pop(job_path, None)) is not None:
            return result
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[job_path] = fut
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation (review of H).
            async with asyncio.timeout(START_TIMEOUT):
                return await fut
        except TimeoutError as e:
            raise NoAnswerError(
                f"systemd did not finish starting {unit.name} within {START_TIMEOUT:.0f}s",
                hint=f"'systemctl status {unit.name}' shows what it is waiting for",
            ) from e
        finally:
            self._waiters.pop(job_path, None)

    async def unit_state(self, name: str) -> UnitState | None:
        """The unit's state, or None if systemd has no such unit loaded (never existed, or garbage-collected)."""
        if (path := await self._unit_path(name)) is None:
            return None
        unit = await self._get_all(path, UNIT)
        service = await self._get_all(path, SERVICE)
        return UnitState(
            name=name,
            load_state=unit.get("LoadState", ""),
            active_state=unit.get("ActiveState", ""),
            sub_state=unit.get("SubState", ""),
            result=service.get("Result", ""),
            main_pid=service.get("MainPID", 0),
            exec_main_code=service.get("ExecMainCode", 0),
            exec_main_status=service.get("ExecMainStatus", 0),
            exec_main_start_usec=service.get("ExecMainStartTimestamp", 0),
            exec_main_exit_usec=service.get("ExecMainExitTimestamp", 0),
            user=service.get("User", ""),
            group=service.get("Group", ""),
            working_directory=service.get("WorkingDirectory", ""),
            exec_start_argv=tuple(service["ExecStart"][0][1]) if service.get("ExecStart") else (),
            cpu_usec=_accounted(service.get("CPUUsageNSec"), 1000),
            memory_bytes=_accounted(service.get("MemoryCurrent")),
            tasks=_accounted(service.get("TasksCurrent")),
            invocation_id=bytes(unit.get("InvocationID", b"")).hex(),
            control_pid=service.get("ControlPID", 0),
            stop_post=_first_run(service.get("ExecStopPost")),
        )

    async def timer_state(self, name: str) -> TimerUnitState | None:
        """A timer unit's state and its next and last run, or None if systemd has no such unit loaded."""
        if (path := await self._unit_path(name)) is None:
            return None
        unit = await self._get_all(path, UNIT)
        timer = await self._get_all(path, TIMER)
        # A calendar timer's next run is on the realtime clock, a monotonic one's (OnActiveSec=...) on CLOCK_MONOTONIC,
        # shown here as realtime, as `systemctl list-timers` does.
        candidates = []
        if (realtime := _accounted(timer.get("NextElapseUSecRealtime"))) is not None and realtime > 0:
            candidates.append(realtime)
        if (monotonic := _accounted(timer.get("NextElapseUSecMonotonic"))) is not None and monotonic > 0:
            candidates.append(time.time_ns() // 1000 + monotonic - time.monotonic_ns() // 1000)
        last = _accounted(timer.get("LastTriggerUSec"))
        return TimerUnitState(
            name=name,
            load_state=unit.get("LoadState", ""),
            active_state=unit.get("ActiveState", ""),
            next_usec=min(candidates) if candidates else None,
            last_usec=last or None,
        )

    async def usage(self, name: str) -> UnitUsage | None:
        """What the unit uses now, as `systemctl status` shows it; None if systemd has no such unit loaded."""
        if (path := await self._unit_path(name)) is None:
            return None
        # One GetAll of the service's properties: one round trip, where Get would take one per counter.
        service = await self._get_all(path, SERVICE)
        return UnitUsage(
            cpu_usec=_accounted(service.get("CPUUsageNSec"), 1000),
            memory_bytes=_accounted(service.get("MemoryCurrent")),
            tasks=_accounted(service.get("TasksCurrent")),
            io_read_bytes=_accounted(service.get("IOReadBytes")),
            io_write_bytes=_accounted(service.get("IOWriteBytes")),
        )

    async def stop(self, name: str) -> None:
        """Ask systemd to stop the unit (SIGTERM to all its processes, SIGKILL after TimeoutStopSec=); returns once
        the stop is queued, not when it is done."""
        await self._manager("StopUnit", "ss", [name, "replace"])

    async def kill(self, name: str, signo: int, *, main_only: bool = False) -> None:
        """Send a signal to every process of the unit (systemctl kill), or with `main_only` to its main process
        alone (systemd refuses when it has none)."""
        await self._manager("KillUnit", "ssi", [name, "main" if main_only else "all", signo])

    async def set_properties(self, unit: UnitProperties) -> None:
        """Set properties of a unit at runtime (systemctl set-property --runtime); loads a slice if need be."""
        if unit.properties:
            props, fds = _variants(unit)
            await self._manager("SetUnitProperties", "sba(sv)", [unit.name, True, props], fds)

    async def list_units(self, pattern: str) -> list[str]:
        """Names of the loaded units matching a glob, whatever their state."""
        reply = await self._manager("ListUnitsByPatterns", "asas", [[], [pattern]])
        return [row[0] for row in reply.body[0]]

    async def reset_failed(self, name: str) -> None:
        try:
            await self._manager("ResetFailedUnit", "s", [name])
        except SjobError as e:
            if e.code is not ErrorCode.NoSuchJob:
                raise

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _unit_path(self, name: str) -> str | None:
        """The unit's object path, or None if systemd has no such unit loaded."""
        try:
            reply = await self._manager("GetUnit", "s", [name])
        except SjobError as e:
            if e.code is ErrorCode.NoSuchJob:
                return None
            raise
        path: str = reply.body[0]
        return path

    def _on_message(self, msg: Message) -> None:
        if msg.message_type in (MessageType.SIGNAL, MessageType.METHOD_CALL):
            # Descriptors anyone on the bus may send along (the bus passes them: sjobd negotiated fds for a job's
            # stdin); nothing sjobd takes comes so, and each kept would be one less for sjobd (review of H).
            for fd in msg.unix_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # systemd's signals are broadcasts, which reach sjobd only through the match rules above (sender= is checked
        # by the bus). A signal addressed to sjobd can come from anyone on the bus: it is not systemd's (review of H).
        if msg.message_type is not MessageType.SIGNAL or msg.destination is not None:
            return
        if msg.member == "PropertiesChanged" and msg.interface == PROPERTIES:
            if msg.signature == "sa{sv}as" and (msg.path or "").startswith(JOB_UNIT_PATHS) and msg.body[0] == UNIT:
                changed = msg.body[1]
                active, job = changed.get("ActiveState"), changed.get("Job")
                # "inactive" with a job pending is a unit about to start (systemd sends its state as it queues the
                # start), or one whose stop job has yet to finish: the end comes when the job is gone.
                if active is not None and active.value in ("inactive", "failed") and (job is None or not job.value[0]):
                    self._unit_ended(_unit_name(msg.path or ""))
            return
        if msg.member == "UnitRemoved" and msg.interface == MANAGER:
            if msg.signature == "so":
                self._unit_ended(msg.body[0])
            return
        if msg.member != "JobRemoved" or msg.interface != MANAGER or msg.signature != "uoss":
            return
        _id, job_path, unit_name, result = msg.body
        if (fut := self._waiters.get(job_path)) is not None:
            if not fut.done():
                fut.set_result(result)
        elif unit_name.startswith("sjob-"):
            self._early[job_path] = result
            while len(self._early) > _EARLY_MAX:
                self._early.popitem(last=False)

    def _unit_ended(self, name: str) -> None:
        """Tell `watch_ends`'s callback, if the unit is a job's (sjob-ID.service; not a user's slice, nor a timer)."""
        try:
            job_id = parse_job_id(name)
        except SjobError:
            return
        if name == unit_for(job_id):  # the callback's own errors are not swallowed here
            self._ended(name)

    async def _get_all(self, path: str, interface: str) -> dict[str, Any]:
        reply = await self._call(DEST, path, PROPERTIES, "GetAll", "s", [interface])
        return {key: variant.value for key, variant in reply.body[0].items()}

    async def _manager(self, member: str, signature: str, body: list[Any], fds: list[int] | None = None) -> Message:
        return await self._call(DEST, PATH, MANAGER, member, signature, body, fds)

    async def _call(
        self,
        dest: str,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
        fds: list[int] | None = None,
    ) -> Message:
        msg = Message(
            destination=dest,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
            unix_fds=fds or [],
        )
        deadline = asyncio.timeout(CALL_TIMEOUT)  # not wait_for, which can swallow a cancellation (3.11)
        try:
            async with deadline:
                reply = await self._bus.call(msg)
        except (OSError, EOFError) as e:
            if deadline.expired():  # TimeoutError, an OSError: not the socket's own ETIMEDOUT
                raise NoAnswerError(
                    f"systemd did not answer {member} within {CALL_TIMEOUT:g}s",
                    hint="systemd is busy or hung ('systemctl status' shows whether it answers): try again later",
                ) from e
            raise SjobError(
                ErrorCode.SystemdError,
                f"lost the connection to the system bus: {e}",
                hint="restart sjobd: systemctl restart sjobd",
            ) from e
        return _check(reply, member)


def _variants(unit: UnitProperties) -> tuple[list[list[Any]], list[int]]:
    """The unit's properties as D-Bus variants, and the file descriptors they pass: a 'h' value on the wire is an
    index into the message's descriptors, which the kernel copies into systemd (SCM_RIGHTS)."""
    props: list[list[Any]] = []
    fds: list[int] = []
    for key, signature, value in unit.signed():
        if isinstance(value, PassedFd):
            fds.append(value.fd)
        props.append([key, Variant(signature, len(fds) - 1 if isinstance(value, PassedFd) else value)])
    return props, fds


def _accounted(value: object, divisor: int = 1) -> int | None:
    # systemd says "not accounted" with the largest 64-bit value.
    if not isinstance(value, int) or value == 2**64 - 1:
        return None
    return value // divisor


def _first_run(commands: object) -> tuple[int, int, int] | None:
    """(pid, code, status) of the first command of an Exec*= property, a(sasbttttuii): path, argv, ignore-errors,
    start and exit timestamps (realtime and monotonic), then those three; None if there is none, or if it is not
    what systemd documents."""
    if not isinstance(commands, list) or not commands or not isinstance(commands[0], list | tuple):
        return None
    run = tuple(commands[0][7:10])
    if len(run) != 3 or not all(isinstance(n, int) for n in run):
        return None
    return run[0], run[1], run[2]


def _check(reply: Message, member: str) -> Message:
    """Map a D-Bus error reply to an SjobError; the only place D-Bus error names are interpreted."""
    if reply.message_type is not MessageType.ERROR:
        return reply
    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
    if reply.error_name == NO_SUCH_UNIT:
        # Callers that expect "no such unit" catch this; it never reaches a client as is.
        raise SjobError(ErrorCode.NoSuchJob, text or "no such unit")
    if reply.error_name == NO_SUCH_PROCESS:
        raise NoSuchProcessError(f"systemd refused {member}: {text}")
    if reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs":
        # What systemd found wrong in a property it was sent: for sjob, a timer's calendar spec it cannot parse.
        raise SjobError(ErrorCode.InvalidArgument, f"systemd refused {member}: {text}")
    if reply.error_name == "org.freedesktop.DBus.Error.AccessDenied":
        raise SjobError(ErrorCode.PermissionDenied, f"systemd refused {member}: {text}", hint="sjobd must run as root")
    raise SjobError(ErrorCode.SystemdError, f"systemd refused {member}: {text} ({reply.error_name})")


def _unit_name(path: str) -> str:
    """The unit whose object `path` is: its last element unescaped (sd_bus_path_decode(): `_xx` is the byte xx)."""
    label = path.rsplit("/", 1)[1]
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m[1], 16)), label)
