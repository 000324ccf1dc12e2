"""From systemd's view of a unit, or its exit record, to a job's outcome."""

import asyncio
import dataclasses
import os
import typing

import pytest

from supervisor import units
from supervisor.logformat import ExitRecord, QuotaRecord
from supervisor.protocol import JobState
from supervisor.units import CLD_EXITED, CLD_KILLED, UnitState, outcome_of_exit, outcome_of_unit


@pytest.mark.parametrize(
    ("record", "state", "status", "signal", "words"),
    [
        (ExitRecord("success", "exited", 0), JobState.exited, 0, None, None),
        (ExitRecord("exit-code", "exited", 3), JobState.failed, 3, None, None),
        (ExitRecord("signal", "killed", 15), JobState.failed, None, 15, "SIGTERM"),
        (ExitRecord("core-dump", "dumped", 11), JobState.failed, None, 11, "core dumped"),
        (ExitRecord("oom-kill", "killed", 9), JobState.failed, None, 9, "out-of-memory"),
        (ExitRecord("timeout", "killed", 15), JobState.failed, None, 15, "timed out"),
        (ExitRecord("exit-code", "exited", 200), JobState.failed, 200, None, "working directory"),
    ],
)
def test_outcome_of_exit(
    record: ExitRecord, state: JobState, status: int | None, signal: int | None, words: str | None
) -> None:
    outcome = outcome_of_exit(record)
    assert (outcome.state, outcome.exit_status, outcome.signal) == (state, status, signal)
    if words is None:
        assert outcome.message is None
    else:
        assert outcome.message is not None
        assert words in outcome.message


def unit_state(code: int, status: int, result: str) -> UnitState:
    return UnitState("sjob-1a2b3c4d.service", "loaded", "failed", "failed", result, 0, code, status, 0, 0, "1000")


def test_outcome_of_unit() -> None:
    chdir = outcome_of_unit(unit_state(CLD_EXITED, 200, "exit-code"))
    assert chdir.state is JobState.failed
    assert chdir.message is not None
    assert "working directory" in chdir.message
    killed = outcome_of_unit(unit_state(CLD_KILLED, 9, "signal"))
    assert (killed.signal, killed.exit_status) == (9, None)


def test_a_job_over_its_output_quota_says_so() -> None:
    stopped = units.outcome_of_exit(ExitRecord("success", "killed", 15), None)
    quota = units.over_quota(stopped, QuotaRecord(1 << 30, "stop"))
    assert quota.message == (
        "stopped by sjob: its output reached the quota of 1 GiB ([output] in policy.toml); stopped by signal SIGTERM"
    )
    dropped = units.over_quota(units.outcome_of_exit(ExitRecord("success", "exited", 0), None), QuotaRecord(10, "drop"))
    assert dropped.message == "output beyond the quota of 10 bytes was dropped ([output] in policy.toml)"


@pytest.mark.parametrize(
    ("reply", "run"),
    [
        # ExecStopPost as GetAll gives it (a(sasbttttuii)): the report, ended by SIGKILL.
        ([["/opt/sjob/libexec/sjob-shim", ["sjob-shim", "--report", "x"], False, 1, 2, 3, 4, 77, 2, 9]], (77, 2, 9)),
        ([], None),
        (None, None),
        ([["a"]], None),
        ([None], None),
        ([[]], None),
        ([["p", [], False, 1, 2, 3, 4, "77", 2, 9]], None),
    ],
)
def test_an_exec_commands_run_is_read_or_ignored(reply: object, run: tuple[int, int, int] | None) -> None:
    """What systemd says of a unit's ExecStopPost; anything else is "not known", never an exception in sjobd's
    sweep or a follower."""
    from supervisor.systemd import _first_run  # noqa: PLC0415 - the D-Bus adapter, imported by this test only

    assert _first_run(reply) == run


def test_a_stopping_unit_holds_only_the_jobs_leftovers_between_its_main_process_and_its_report() -> None:
    base = UnitState("u", "loaded", "deactivating", "stop-sigterm", "success", 0, 0, 0, 0, 0, "", stop_post=(0, 0, 0))
    assert base.only_leftovers
    assert not dataclasses.replace(base, main_pid=5).only_leftovers
    assert not dataclasses.replace(base, control_pid=5).only_leftovers
    assert not dataclasses.replace(base, stop_post=(8, 0, 0)).only_leftovers
    assert not dataclasses.replace(base, sub_state="final-sigterm").only_leftovers


def test_systemd_tells_when_one_of_sjobs_units_stops_or_goes() -> None:
    """sjobd learns of a unit's end from systemd's signals, whoever stopped it: PropertiesChanged of the Unit
    interface with an ActiveState of "inactive" or "failed" and no job pending (the object path names the unit,
    escaped), and UnitRemoved. Nothing else: another unit's, a user's slice or a timer, the Service interface's, a
    unit that became active or whose start or stop job is still pending, or a signal addressed to sjobd, which anyone
    on the bus may send (review of H)."""
    from dbus_fast import Message, MessageType, Variant  # noqa: PLC0415 - the D-Bus adapter's types
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    from supervisor import systemd  # noqa: PLC0415

    manager = systemd.Systemd(typing.cast(MessageBus, None))
    ended: list[str] = []
    manager.watch_ends(ended.append)
    no_job = (0, "/")

    def signal(
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[object],
        destination: str | None = None,
        unix_fds: list[int] | None = None,
    ) -> Message:
        return Message(
            message_type=MessageType.SIGNAL, path=path, interface=interface, member=member, signature=signature,
            body=body, destination=destination, unix_fds=unix_fds or [],
        )  # fmt: skip

    def changed(path: str, active: str, job: tuple[int, str] = no_job, interface: str = systemd.UNIT) -> Message:
        props = {"ActiveState": Variant("s", active), "SubState": Variant("s", "dead"), "Job": Variant("(uo)", job)}
        return signal(path, systemd.PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, props, []])

    def removed(unit: str, destination: str | None = None) -> Message:
        body: list[object] = [unit, "/org/freedesktop/systemd1/u"]
        return signal(systemd.PATH, systemd.MANAGER, "UnitRemoved", "so", body, destination)

    ours = "/org/freedesktop/systemd1/unit/sjob_2d0a1b2c3d_2eservice"
    pending = (7, "/org/freedesktop/systemd1/job/7")
    for msg in (
        changed(ours, "failed"),
        changed(ours, "inactive"),
        changed(ours, "inactive", pending),
        changed(ours, "active"),
        changed(ours, "deactivating"),
        changed(ours, "failed", interface=systemd.SERVICE),
        changed("/org/freedesktop/systemd1/unit/cron_2eservice", "failed"),
        changed("/org/freedesktop/systemd1/unit/sjob_2du1000_2eslice", "inactive"),
        removed("sjob-0a1b2c3d.service"),
        removed("sjob-0a1b2c3d.timer"),
        removed("sjob-u1000.slice"),
        removed("cron.service"),
        removed("sjob-0a1b2c3d.service", destination=":1.99"),
        signal(systemd.PATH, systemd.MANAGER, "UnitRemoved", "s", ["sjob-0a1b2c3d.service"]),
    ):
        manager._on_message(msg)
    assert ended == ["sjob-0a1b2c3d.service"] * 3
    # Descriptors sent along with a signal (or a call) to sjobd, which anyone on the bus can do: closed, not kept.
    read_end, write_end = os.pipe()
    manager._on_message(
        signal(systemd.PATH, systemd.MANAGER, "UnitRemoved", "h", [0], destination=":1.99", unix_fds=[read_end])
    )
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(read_end)
    os.close(write_end)


def test_a_call_systemd_does_not_answer_ends_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """One call PID 1 never answers (hung, or busy for longer than systemctl waits) must not hold sjobd's looks at
    its units, nor a start, for ever: it ends as sd-bus's calls do, with an error, after CALL_TIMEOUT (review of
    H)."""
    from dbus_fast import Message  # noqa: PLC0415 - the D-Bus adapter's types
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    from supervisor import systemd  # noqa: PLC0415
    from supervisor.errors import NoAnswerError  # noqa: PLC0415

    class HungBus:
        async def call(self, msg: Message) -> Message:
            await asyncio.Event().wait()
            raise AssertionError("never answered")

    monkeypatch.setattr(systemd, "CALL_TIMEOUT", 0.05)
    manager = systemd.Systemd(typing.cast(MessageBus, HungBus()))
    with pytest.raises(NoAnswerError) as e:
        asyncio.run(asyncio.wait_for(manager.unit_state("sjob-1a2b3c4d.service"), 10))
    assert e.value.message == "systemd did not answer GetUnit within 0.05s"


def test_a_call_cancelled_as_its_answer_comes_is_cancelled() -> None:
    """Python 3.11's asyncio.wait_for, around each call for its timeout, returned normally when cancelled in the
    same turn as the answer came: a loop of calls (the look at units, the kill rounds) went on after sjobd had
    cancelled it to shut down (review of H)."""
    from dbus_fast import Message, MessageType  # noqa: PLC0415 - the D-Bus adapter's types
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    from supervisor import systemd  # noqa: PLC0415

    class Bus:
        def __init__(self) -> None:
            self.answers: list[asyncio.Future[Message]] = []

        async def call(self, msg: Message) -> Message:
            self.answers.append(asyncio.get_running_loop().create_future())
            return await self.answers[-1]

    async def body() -> tuple[bool, int]:
        bus = Bus()
        manager = systemd.Systemd(typing.cast(MessageBus, bus))

        async def looking() -> None:
            while len(bus.answers) < 5:
                await manager.list_units("sjob-*")

        task = asyncio.create_task(looking())
        await asyncio.sleep(0.01)
        reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=1, signature="a(ssssssouso)", body=[[]])
        bus.answers[-1].set_result(reply)  # the answer comes...
        await asyncio.sleep(0)
        task.cancel()  # ...and sjobd cancels the caller in the same turn
        for _ in range(5):  # the answers to any later calls come at once
            await asyncio.sleep(0)
            if not bus.answers[-1].done():
                bus.answers[-1].set_result(reply)
        await asyncio.sleep(0.01)
        return task.cancelled(), len(bus.answers)

    cancelled, calls = asyncio.run(body())
    assert cancelled, f"the looking went on after it was cancelled: {calls} calls"
