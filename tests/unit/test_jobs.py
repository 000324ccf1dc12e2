"""JobService and its reaper with fakes behind their Protocols: start, follow, status, failures, and recording exits."""

import asyncio
import dataclasses
import errno
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from supervisor import ledger as ledger_module
from supervisor import reaper as reaper_module
from supervisor.auth import Principal
from supervisor.errors import ErrorCode, NoAnswerError, SjobError, no_such_job
from supervisor.jobs import JobService
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger, now_usec
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord, QuotaRecord
from supervisor.policy import Retention
from supervisor.properties import ShimCommand, UnitProperties
from supervisor.protocol import Chunk, Job, JobSpec, JobState, Limits, Resources, Stream
from supervisor.queue import JobQueue
from supervisor.reaper import Reaper
from supervisor.records import JobRecords
from supervisor.units import CLD_EXITED, CLD_KILLED, UnitState, UnitUsage

from .fakes import FakeJobLog, FakeUnits, exec_entry, failed_unit, shipped_access

SHIM = ShimCommand("/opt/sjob/bin/sjob-shim")
ALICE = Principal(1000, 1000, 10, "alice")
BOB = Principal(1001, 1001, 11, "bob")
ROOT = Principal(0, 0, 1, "root")
T = TypeVar("T")


def scenario(
    body: Callable[[JobService, Reaper, FakeUnits, FakeJobLog], Awaitable[T]], tmp_path: Path, **units: object
) -> T:
    async def main() -> T:
        log = FakeJobLog()
        fake_units = FakeUnits(log, **units)  # type: ignore[arg-type]
        records = JobRecords(tmp_path / "jobs.sqlite")
        access, profiles = shipped_access()
        ledger = Ledger(records, log)
        reaper = Reaper(fake_units, log, records, ledger, lambda: access.policy.retention)
        launcher = Launcher(fake_units, records, ledger, reaper, lambda: access.policy, SHIM)
        service = JobService(
            fake_units,
            log,
            records,
            ledger,
            reaper,
            launcher,
            access,
            profiles,
            JobQueue(records, ledger, launcher, access),
            is_block_device=lambda path: path == "/dev/vda",
            online_cpus=lambda: frozenset({0, 1}),
        )
        try:
            return await asyncio.wait_for(body(service, reaper, fake_units, log), 20)
        finally:
            await reaper.close()
            await fake_units.close()

    return asyncio.run(main())


def wrote(log: FakeJobLog, job_id: str) -> bool:
    return any(isinstance(r, OutputRecord) for r in log.records.get(job_id, []))


async def collect(service: JobService, principal: Principal, job_id: str) -> tuple[dict[str, bytes], Job]:
    streams = {"stdout": b"", "stderr": b""}
    final = None
    async for item in service.follow(principal, job_id):
        if isinstance(item, Chunk):
            streams[item.stream.value] += item.data
        elif isinstance(item, Job):
            final = item
    assert final is not None
    return streams, final


def test_run_follow_and_status(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], str(tmp_path)))
        assert job.state is JobState.running
        assert (job.uid, job.user) == (1000, "alice")
        assert units.started[0].get("User") == "1000"
        streams, final = await collect(service, ALICE, job.id)
        assert streams == {"stdout": b"out\n", "stderr": b"err\n"}
        assert (final.state, final.exit_status, final.result) == (JobState.failed, 3, "exit-code")
        assert (await service.status(ALICE, job.id)).exit_status == 3
        # A finished job's output can be replayed, and ends the same way.
        assert await collect(service, ALICE, job.id) == (streams, final)
        assert [j.id for j in service.list_jobs(ALICE)] == [job.id]

    scenario(body, tmp_path)


def test_other_users_jobs_look_missing(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        for call in (service.status(BOB, job.id), collect(service, BOB, job.id)):
            with pytest.raises(SjobError) as e:
                await call
            assert e.value.code is ErrorCode.NoSuchJob
            missing = no_such_job(job.id)
            assert (e.value.message, e.value.hint) == (missing.message, missing.hint)
        assert service.list_jobs(BOB) == []
        assert (await service.status(ROOT, job.id)).id == job.id
        assert service.list_jobs(ROOT) == []  # root's own jobs
        assert [j.id for j in service.list_jobs(ROOT, everyone=True)] == [job.id]
        with pytest.raises(SjobError) as denied:
            service.list_jobs(BOB, everyone=True)
        assert denied.value.code is ErrorCode.PermissionDenied

    scenario(body, tmp_path)


def test_start_failure_explains_and_collects_the_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaper_module, "COLLECT_INTERVAL", 0.01)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        unit_name = "sjob-{}.service"

        async def deactivating_then_failed(unit: object) -> str:
            name = units.started[-1].name
            units.states[name] = failed_unit(name, CLD_EXITED, 200, "exit-code", active="deactivating")
            asyncio.get_running_loop().call_later(
                0.05, units.states.__setitem__, name, failed_unit(name, CLD_EXITED, 200, "exit-code")
            )
            return "failed"

        original = units.start_transient

        async def start(unit: UnitProperties, aux: Sequence[UnitProperties] = ()) -> str:
            await original(unit)
            return await deactivating_then_failed(unit)

        units.start_transient = start  # type: ignore[method-assign]
        with pytest.raises(SjobError) as e:
            await service.start(ALICE, JobSpec(["/bin/true"], "/nonexistent"))
        assert e.value.code is ErrorCode.StartFailed
        assert "working directory" in e.value.message
        assert e.value.hint is not None
        assert "/nonexistent" in e.value.hint
        (job,) = service.list_jobs(ALICE)
        assert (job.state, job.exit_status) == (JobState.failed, 200)
        for _ in range(100):
            if units.reset:
                break
            await asyncio.sleep(0.01)
        assert units.reset == [unit_name.format(job.id)]

    scenario(body, tmp_path, run_commands=False)


def test_exit_watcher_records_exits_and_resets_failed_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaper_module, "COLLECT_INTERVAL", 0.01)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        watcher = asyncio.create_task(reaper.watch_exits())
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        units.states[job.unit] = failed_unit(job.unit, 2, 9, "signal")
        log.add(job.id, ExitRecord("signal", "killed", 9, when_usec=123))
        for _ in range(200):
            if units.reset:
                break
            await asyncio.sleep(0.01)
        recorded = await service.status(ALICE, job.id)
        assert (recorded.state, recorded.signal, recorded.ended_usec) == (JobState.failed, 9, 123)
        assert recorded.message == "killed by signal SIGKILL"
        assert units.reset == [job.unit]
        watcher.cancel()

    scenario(body, tmp_path, run_commands=False)


def test_a_unit_that_vanishes_without_an_exit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.add(job.id, OutputRecord(1, "stdout", b"partial"))
        streams, final = await collect(service, ALICE, job.id)
        assert streams["stdout"] == b"partial"
        assert final.state is JobState.unknown
        assert final.message is not None
        assert "vanished" in final.message

    scenario(body, tmp_path, run_commands=False)


def test_without_an_exit_record_the_managers_log_says_how_a_job_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd < 257 loses a running job's ExecStopPost on a daemon-reload (and so its exit record); a successful
    unit is then collected at once. What PID 1 logged of the unit's end tells how it ended, not "unknown"."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        vanished = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.manager_exits[vanished.unit] = ExitRecord("success", "exited", 0, 123)
        units.states.pop(vanished.unit, None)
        ended = await service.status(ALICE, vanished.id)
        assert (ended.state, ended.exit_status, ended.ended_usec) == (JobState.exited, 0, 123)
        settled = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.manager_exits[settled.unit] = ExitRecord("exit-code", "exited", 3, 456)
        units.states[settled.unit] = failed_unit(settled.unit, CLD_EXITED, 3, "exit-code")
        failed = await service.status(ALICE, settled.id)
        assert (failed.state, failed.result, failed.exit_status) == (JobState.failed, "exit-code", 3)

    scenario(body, tmp_path, run_commands=False)


def test_a_unit_that_failed_without_an_exit_record_is_settled_from_its_properties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd could not spawn the ExecStopPost that writes the exit record (a full TasksMax): the unit is failed
    # with result "resources", and the job must not stay "running" for ever.
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sh", "-c", "sleep 60"], "/"))
        failed = failed_unit(job.unit, CLD_KILLED, signal.SIGTERM, "resources")
        units.states[job.unit] = dataclasses.replace(failed, active_state="active", sub_state="running")
        await service.stop(ALICE, job.id)
        units.states[job.unit] = failed
        final = await service.status(ALICE, job.id)
        assert (final.state, final.result, final.signal) == (JobState.stopped, "resources", signal.SIGTERM)
        assert final.message == "stopped by alice"
        await asyncio.sleep(0.05)
        assert units.reset == [job.unit]  # and collected

    scenario(body, tmp_path, run_commands=False)


def test_invalid_spec_creates_no_unit(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        with pytest.raises(SjobError) as e:
            await service.start(ALICE, JobSpec([], "/"))
        assert e.value.code is ErrorCode.InvalidArgument
        assert units.started == []
        assert service.list_jobs(ALICE) == []

    scenario(body, tmp_path)


def test_allowed_cpus_must_be_online_and_are_checked_inside_the_unit(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        with pytest.raises(SjobError) as e:
            await service.start(ALICE, JobSpec(["/bin/true"], "/", limits=Limits(allowed_cpus=[1, 2, 3])))
        assert (e.value.code, e.value.message) == (
            ErrorCode.InvalidArgument,
            "--allowed-cpus: this machine has no CPU 2-3 online",
        )
        assert e.value.hint == "its CPUs are 0-1"
        assert units.started == []
        job = await service.start(ALICE, JobSpec(["/bin/true"], "/", limits=Limits(allowed_cpus=[1])))
        (unit,) = units.started
        assert unit.get("AllowedCPUs") == b"\x02"
        assert exec_entry(unit)[1][1].endswith(",cpus=1")  # the shim's --check=...: it refuses other CPUs
        assert job.limits is not None
        assert job.limits.allowed_cpus == [1]

    scenario(body, tmp_path)


def test_job_ids_are_unique_and_well_formed(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        started = [await service.start(ALICE, JobSpec(["/bin/true"], "/")) for _ in range(20)]
        assert len({j.id for j in started}) == 20
        assert all(j.unit == f"sjob-{j.id}.service" and len(j.id) == 8 for j in started)
        assert dataclasses.replace(started[0], id=started[0].id).id == started[0].id

    scenario(body, tmp_path, run_commands=False)


def test_follow_ends_when_output_is_complete_and_the_command_exited(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/echo", "hi"], "/"))
        log.add(job.id, OutputRecord(1, "stdout", b"hi\n"))
        log.add(job.id, EofRecord(1))
        units.states[job.unit] = dataclasses.replace(
            failed_unit(job.unit, CLD_EXITED, 0, "success", active="deactivating"), exec_main_exit_usec=42
        )
        streams, final = await collect(service, ALICE, job.id)  # no exit record yet: ends on systemd's word
        assert (streams["stdout"], final.state, final.exit_status, final.ended_usec) == (
            b"hi\n",
            JobState.exited,
            0,
            42,
        )
        # The exit record is the authority and corrects the provisional outcome where it differs.
        log.add(job.id, ExitRecord("timeout", "exited", 0, when_usec=43))
        async for _ in service.follow(ALICE, job.id):
            pass
        corrected = await service.status(ALICE, job.id)
        assert (corrected.state, corrected.result, corrected.ended_usec) == (JobState.failed, "timeout", 43)

    scenario(body, tmp_path, run_commands=False)


def test_follow_waits_for_the_exit_record_when_the_command_was_killed(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.add(job.id, EofRecord(0))
        units.states[job.unit] = failed_unit(job.unit, CLD_KILLED, 9, "signal", active="deactivating")
        asyncio.get_running_loop().call_later(0.3, log.add, job.id, ExitRecord("oom-kill", "killed", 9))
        _, final = await collect(service, ALICE, job.id)
        assert (final.result, final.message) == ("oom-kill", "killed by the out-of-memory killer")

    scenario(body, tmp_path, run_commands=False)


def test_stop_records_who_and_ends_as_stopped(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        while not units.processes.get(job.unit):  # the fake's process runs (under load, 0.2 s were not enough)
            await asyncio.sleep(0.01)
        stopping = await service.stop(ALICE, job.id, grace_usec=5_000_000)
        assert (stopping.state, stopping.stopped_by) == (JobState.running, "alice")
        assert units.stopped == [job.unit]
        _, final = await collect(service, ALICE, job.id)
        assert (final.state, final.signal, final.message) == (JobState.stopped, 15, "stopped by alice")
        # Stopping again is a no-op that says how the job ended.
        again = await service.stop(ALICE, job.id)
        assert again.state is JobState.stopped
        assert units.stopped == [job.unit]

    scenario(body, tmp_path)


def test_grace_period_ends_in_sigkill(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], "/"))
        while not wrote(log, job.id):  # the trap is set once the job has written
            await asyncio.sleep(0.02)
        before = len(units.calls)  # the user's slice was set up at the start
        await service.stop(ALICE, job.id, grace_usec=300_000)
        assert units.signalled == []  # SIGTERM came with the stop; SIGKILL waits for the grace period
        _, final = await asyncio.wait_for(collect(service, ALICE, job.id), 10)
        # The main process alone: the unit's exit report may be starting beside it (test_reaper has the rest).
        assert units.calls[before:] == ["kill main SIGKILL"]
        assert (final.state, final.signal, final.message) == (
            JobState.stopped,
            9,
            "stopped by alice (killed by signal SIGKILL)",
        )

    scenario(body, tmp_path)


@dataclasses.dataclass
class ScriptedUnits(FakeUnits):
    """A unit going through the states of `script`, one per look at it, then gone (or staying in the last)."""

    script: list[UnitState] = dataclasses.field(default_factory=list)
    stays: bool = False

    async def unit_state(self, name: str) -> UnitState | None:
        if len(self.script) > 1 or (self.script and not self.stays):
            return self.script.pop(0)
        return self.script[0] if self.script else None


def stopping(sub: str, main: int = 0, control: int = 0, run: str = "a" * 32, report: int = 0) -> UnitState:
    active = "active" if sub == "running" else "deactivating"
    state = UnitState("sjob-x.service", "loaded", active, sub, "success", main, 0, 0, 0, 0, "", invocation_id=run)
    return dataclasses.replace(state, control_pid=control, stop_post=(report, 0, 0))


def reaper_over(units: FakeUnits, tmp_path: Path) -> Reaper:
    """A reaper alone (no job service) over `units` and their log, as scenario() makes one."""
    records = JobRecords(tmp_path / "jobs.sqlite")
    retention = shipped_access()[0].policy.retention
    return Reaper(units, units.log, records, Ledger(records, units.log), lambda: retention)


def grace_rounds(tmp_path: Path, script: list[UnitState], forbid_forks: bool = True, stays: bool = False) -> list[str]:
    """What sjobd sends systemd for a grace period of 0 as the unit goes through `script`."""

    async def main() -> list[str]:
        units = ScriptedUnits(FakeJobLog(), script=script, stays=stays)
        reaper = reaper_over(units, tmp_path)
        reaper.kill_later("sjob-x.service", 0, forbid_forks=forbid_forks)
        await asyncio.wait_for(asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()}), 10)
        return units.calls

    return asyncio.run(main())


@pytest.mark.parametrize("forbid_forks", [True, False])
def test_the_grace_periods_sigkill_never_reaches_the_exit_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forbid_forks: bool
) -> None:
    """While the job's main process lives (stop-sigterm), only it is killed: systemd starts the exit report
    (ExecStopPost) in the unit's cgroup as soon as it has gone, maybe before a kill for the whole unit arrives.
    Once it has gone, what is left before the report (stop-sigterm, no main process, no report yet) and after it
    (final-sigterm) is the job's own, killed as a whole, with forking forbidden first (a fork bomb), except in a
    timer's service. Nothing while the report runs (stop-post). A unit whose stop systemd has not begun yet (a
    grace of 0) is looked at again; a unit in its next run (a timer's service) is left alone."""
    monkeypatch.setattr(reaper_module, "KILL_INTERVAL", 0)
    monkeypatch.setattr(reaper_module, "KILL_INTERVAL_MAX", 0)
    script = [
        stopping("running", main=5),  # the run being stopped, read as the stop begins
        stopping("running", main=5),  # the grace period is over before systemd has begun the stop
        stopping("stop-sigterm", main=5),
        stopping("stop-sigterm", main=5),  # gone meanwhile: systemd refuses, and the rounds go on
        stopping("stop-sigterm", main=0, control=7),  # a control process: not the job's
        stopping("stop-sigterm", main=0, report=8),  # the report has started: the state was read before it did
        stopping("stop-sigterm", main=0),  # the job's leftovers: forking forbidden first (it shows), then
        stopping("stop-sigterm", main=0),  # still only leftovers: killed
        stopping("stop-post", control=8, report=8),
        stopping("final-sigterm", report=8),
        stopping("final-sigterm", report=8, run="b" * 32),  # the next run
        stopping("final-sigterm", report=8),
    ]
    # Without forbidding forks (a timer's service), the leftovers are killed at once, and again.
    forbid = ["set TasksMax=1"] if forbid_forks else ["kill SIGKILL"]
    assert grace_rounds(tmp_path, script, forbid_forks) == [
        "kill main SIGKILL",
        "kill main SIGKILL",
        *forbid,
        "kill SIGKILL",
        "kill SIGKILL",
    ]


def test_a_grace_period_for_a_timers_next_run_replaces_the_pending_one(tmp_path: Path) -> None:
    """Review of H: a timer's run stopped with a long grace period, then its next run stopped with a shorter one
    that ends later: the first run's grace period must not swallow the second's (the earliest deadline wins only
    for the same run)."""

    async def main() -> list[tuple[str | None, int]]:
        reaper = reaper_over(FakeUnits(FakeJobLog()), tmp_path)
        pending = []
        for grace, run in ((60, "a" * 32), (70, "a" * 32), (70, "b" * 32)):
            reaper.kill_later("sjob-x.service", grace * 1_000_000, forbid_forks=False, run=run)
            _, its_run, task = reaper._grace["sjob-x.service"]
            pending.append((its_run, id(task)))
        await reaper.close()
        return pending

    (first, kept, replaced) = asyncio.run(main())
    assert kept == first  # the same run: the earlier deadline stays
    assert replaced[0] == "b" * 32
    assert replaced[1] != first[1]


def test_the_grace_periods_rounds_outlast_a_slow_exit_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job can make its exit report slow (it shares the job's cgroup and its limits): the rounds last as long as
    systemd's own timeouts can keep the unit stopping, then leave it to systemd, and say so."""
    monkeypatch.setattr(reaper_module, "KILL_INTERVAL", 0.001)
    monkeypatch.setattr(reaper_module, "KILL_INTERVAL_MAX", 0.001)
    monkeypatch.setattr(reaper_module, "KILL_PATIENCE", 10.0)
    # More rounds than the 120 sjobd used to count.
    script = [*[stopping("stop-sigterm", main=5)] * 2, *[stopping("stop-post", control=8, report=8)] * 150]
    assert grace_rounds(tmp_path, [*script, *[stopping("final-sigterm", report=8)] * 2]) == [
        "kill main SIGKILL",
        "set TasksMax=1",
        "kill SIGKILL",
    ]
    monkeypatch.setattr(reaper_module, "KILL_PATIENCE", 0.2)
    assert grace_rounds(tmp_path, [stopping("stop-post", control=8, report=8)], stays=True) == []


@pytest.mark.parametrize(
    ("report", "waits"),
    [
        ((0, 0, 0), True),  # never started, or systemd reloaded since (it keeps no status then)
        ((7, CLD_KILLED, signal.SIGKILL), False),
        ((7, CLD_EXITED, 1), False),
        ((7, CLD_EXITED, 0), True),
    ],
)
def test_a_settled_unit_whose_report_sent_nothing_ends_the_job_at_once(
    tmp_path: Path, report: tuple[int, int, int], waits: bool
) -> None:
    """A unit settled without an exit record waits up to VANISHED_GRACE_USEC for it (journald may be behind),
    but not when systemd says its ExecStopPost never started, was killed or failed: no record is coming (seen in
    CI: a stop's SIGKILL killed the report, and `sjob stop` took 10 s more)."""

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        failed = failed_unit(job.unit, CLD_KILLED, signal.SIGKILL, "signal")
        units.states[job.unit] = dataclasses.replace(failed, stop_post=report, exec_main_exit_usec=77)
        log.add(job.id, QuotaRecord(1000, "drop"))  # as the exit record would, the end says so
        now = await service.status(ALICE, job.id)
        if waits:
            assert not now.state.finished
        else:
            assert (now.state, now.signal, now.ended_usec) == (JobState.failed, 9, 77)
            quota = "output beyond the quota of 1000 bytes was dropped ([output] in policy.toml)"
            assert now.message == f"{quota}; killed by signal SIGKILL"

    scenario(body, tmp_path, run_commands=False)


def test_repeated_stops_keep_one_grace_period_and_the_shortest_wins(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], "/"))
        while not wrote(log, job.id):
            await asyncio.sleep(0.02)
        before = len(asyncio.all_tasks())
        for _ in range(50):  # a client hammering Stop must not make sjobd hold a task per call
            await service.stop(ALICE, job.id, grace_usec=60_000_000)
        assert len(asyncio.all_tasks()) == before + 1
        await service.stop(ALICE, job.id, grace_usec=200_000)  # a shorter grace replaces the pending one
        await asyncio.sleep(0)  # the replaced one takes its cancellation
        assert len(asyncio.all_tasks()) == before + 1
        _, final = await asyncio.wait_for(collect(service, ALICE, job.id), 10)
        assert final.signal == 9
        assert units.calls.count("kill main SIGKILL") == 1  # one grace period's rounds, not two

    scenario(body, tmp_path)


@pytest.mark.parametrize("meanwhile", ["ended", "stopped"])
def test_what_is_recorded_while_systemd_starts_a_job_stays(tmp_path: Path, meanwhile: str) -> None:
    """StartTransientUnit returns once systemd's start job is done, a D-Bus round trip and a wait later. The
    launcher then wrote the record it had read before: an end the exit watcher recorded meanwhile (a quick command
    on a loaded machine), or who stopped the job, was undone, and the job showed running until something looked
    again. Now only a job still starting is marked running."""

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        records = service._records
        starting = units.start_transient

        async def start_transient(unit: UnitProperties, aux: Sequence[UnitProperties] = ()) -> str:
            result = await starting(unit, aux)
            job = records.get(unit.name.removeprefix("sjob-").removesuffix(".service"))
            assert job is not None
            if meanwhile == "ended":  # as the exit watcher does
                service._ledger.record_exit(job.id, ExitRecord("exit-code", "exited", 3, 77))
            else:  # as a stop does
                records.update(dataclasses.replace(job, stopped_by="bob"))
            return result

        units.start_transient = start_transient  # type: ignore[method-assign]
        job = await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        recorded = records.get(job.id)
        assert recorded == job
        if meanwhile == "ended":
            assert (job.state, job.exit_status, job.ended_usec) == (JobState.failed, 3, 77)
        else:
            assert (job.state, job.stopped_by) == (JobState.running, "bob")

    scenario(body, tmp_path, run_commands=False)


def test_a_full_disk_refuses_a_start_before_any_unit_and_sjobd_serves_on(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        first = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        db = service._records._db  # type: ignore[attr-defined]
        db.execute("PRAGMA max_page_count = " + str(db.execute("PRAGMA page_count").fetchone()[0]))
        with pytest.raises(SjobError) as e:
            await service.start(ALICE, JobSpec(["/bin/echo", "x" * 100_000], "/"))
        assert e.value.code is ErrorCode.StorageError
        assert len(units.started) == 1
        assert (await service.status(ALICE, first.id)).id == first.id  # reads still answer

    scenario(body, tmp_path, run_commands=False)


def test_signal_only_and_bad_grace(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        await service.stop(ALICE, job.id, signo=10)
        assert (units.signalled, units.stopped) == ([(job.unit, 10)], [])
        for grace in (-1, 91_000_000):
            with pytest.raises(SjobError) as e:
                await service.stop(ALICE, job.id, grace_usec=grace)
            assert e.value.code is ErrorCode.InvalidArgument
        with pytest.raises(SjobError) as e:
            await service.stop(BOB, job.id)
        assert e.value.code is ErrorCode.NoSuchJob
        await service.stop(ALICE, job.id)

    scenario(body, tmp_path)


def test_a_unit_stopped_behind_sjobds_back_ends_its_job_without_anyone_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's unit stopped with systemctl, its exit report lost (a daemon-reload on systemd < 257 loses it): the
    exit watcher has nothing to read, and sjobd used to learn of the end only from its sweep, once a minute, or a
    request. systemd's signal that the unit stopped or went is enough now: the record gets its grace to come, then
    the end comes from systemd, the unit's properties if it is still there, else the service manager's log. Read
    here as the records are, with no request that would look."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 1_000_000)
    monkeypatch.setattr(reaper_module, "ENDED_LOOK_DELAY", 0.05)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        records = service._records
        failed, gone, running = [await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/")) for _ in range(3)]
        units.states[failed.unit] = failed_unit(failed.unit, CLD_KILLED, signal.SIGKILL, "signal")
        log.manager_exits[gone.unit] = ExitRecord("exit-code", "exited", 3, 123)
        # Loaded again after a daemon-reload, which unloads every unit: nothing ended, nothing to look at.
        units.states[running.unit] = UnitState(
            running.unit, "loaded", "active", "running", "success", 5, 0, 0, 0, 0, ""
        )
        looks_at_journal = log.find_exits
        looked: list[str] = []

        def find_exits(job_id: str, unit: str, invocation: str | None = None) -> list[ExitRecord]:
            looked.append(unit)
            return looks_at_journal(job_id, unit, invocation)

        log.find_exits = find_exits  # type: ignore[method-assign]
        for _ in range(3):  # systemd says so more than once (PropertiesChanged, then UnitRemoved): one look
            units.ended(failed.unit)
        units.ended(gone.unit)
        units.ended(running.unit)
        await asyncio.sleep(0.2)
        assert not any((records.get(job.id) or job).state.finished for job in (failed, gone))  # within the grace
        while not all((records.get(job.id) or job).state.finished for job in (failed, gone)):
            await asyncio.sleep(0.02)
        assert looked == [failed.unit, gone.unit] * 2  # the look, and the one when the grace is over
        assert (records.get(running.id) or running).state is JobState.running
        ended = [records.get(job.id) for job in (failed, gone)]
        assert [(j.state, j.signal, j.exit_status) for j in ended if j] == [
            (JobState.failed, signal.SIGKILL, None),
            (JobState.failed, None, 3),
        ]

    scenario(body, tmp_path, run_commands=False)


@pytest.mark.parametrize("first_look", ["status", "sweep"])
def test_a_grace_begun_by_any_look_ends_the_job_when_it_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_look: str
) -> None:
    """The grace for a job's exit record begins at the first look that finds its unit gone: a request, or sjobd's
    startup sweep for a unit that ended while sjobd was down, when no signal from systemd is coming. The job ends
    when the grace is over, with nobody asking again (review of H: it stayed running, holding a queue slot)."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 300_000)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.manager_exits[job.unit] = ExitRecord("exit-code", "exited", 3, 123)
        if first_look == "status":
            assert not (await service.status(ALICE, job.id)).state.finished
        else:
            await reaper.sweep()
        while not (service._records.get(job.id) or job).state.finished:
            await asyncio.sleep(0.02)
        assert (service._records.get(job.id) or job).exit_status == 3

    scenario(body, tmp_path, run_commands=False)


def test_a_job_systemd_is_still_starting_is_not_taken_for_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While systemd starts a job (a slow start), its unit is not there yet, or inactive with its start job queued.
    A status request then began the grace for the job's exit record, and the look when it was over ended the job
    as "unknown" while it went on to run (review of H)."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 100_000)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        starting = units.start_transient
        slow = asyncio.Event()

        async def start_transient(unit: UnitProperties, aux: Sequence[UnitProperties] = ()) -> str:
            await slow.wait()
            return await starting(unit, aux)

        units.start_transient = start_transient  # type: ignore[method-assign]
        start = asyncio.create_task(service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/")))
        while not (jobs := service.list_jobs(ALICE)):
            await asyncio.sleep(0.01)
        assert (await service.status(ALICE, jobs[0].id)).state is JobState.starting
        await asyncio.sleep(0.5)  # the grace, had one begun, and its look
        slow.set()
        job = await start
        assert job.state is JobState.running
        assert (service._records.get(job.id) or job).state is JobState.running

    scenario(body, tmp_path, run_commands=False)


def test_a_look_the_journal_fails_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal file rotated away under the reader (OSError) during the look at a stopped unit: every unfinished
    record is looked at again a while later, as after a write that failed (review of H: the look ended silently)."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)
    monkeypatch.setattr(reaper_module, "ENDED_LOOK_DELAY", 0.01)
    monkeypatch.setattr(reaper_module, "RESWEEP_DELAY", 0.1)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.manager_exits[job.unit] = ExitRecord("exit-code", "exited", 3, 123)
        reads = log.find_exits
        failures = [OSError(errno.EBADF, "a journal file went away")]

        def find_exits(job_id: str, unit: str, invocation: str | None = None) -> list[ExitRecord]:
            if failures:
                raise failures.pop()
            return reads(job_id, unit, invocation)

        log.find_exits = find_exits  # type: ignore[method-assign]
        units.ended(job.unit)
        while not (service._records.get(job.id) or job).state.finished:
            await asyncio.sleep(0.02)
        assert not failures
        assert (service._records.get(job.id) or job).exit_status == 3

    scenario(body, tmp_path, run_commands=False)


def test_an_exit_that_cannot_be_recorded_neither_ends_the_watcher_nor_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording an exit opens a journal reader (for the quota record), which fails with EMFILE while users' followers
    hold sjobd's descriptors. That ended the exit watcher, and with it sjobd (review of H). Now the watcher goes on,
    and a sweep records the exit a while later."""
    monkeypatch.setattr(reaper_module, "RESWEEP_DELAY", 0.1)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        watcher = asyncio.create_task(reaper.watch_exits())
        first = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        second = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        quota = log.find_quota
        failures = [OSError(errno.EMFILE, "Too many open files")]

        def find_quota(
            job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None
        ) -> QuotaRecord | None:
            if failures:
                raise failures.pop()
            return quota(job_id, unit, owner_uid, invocation)

        log.find_quota = find_quota  # type: ignore[method-assign]
        log.add(first.id, ExitRecord("exit-code", "exited", 3))
        log.add(second.id, ExitRecord("success", "exited", 0))
        # Only the watcher and the sweep record them: list_jobs reads the records as they are.
        while any(not j.state.finished for j in service.list_jobs(ALICE)):
            assert not watcher.done(), watcher
            await asyncio.sleep(0.02)
        assert not failures
        assert [j.exit_status for j in service.list_jobs(ALICE)] == [0, 3]
        watcher.cancel()

    scenario(body, tmp_path, run_commands=False)


def test_a_sweep_goes_on_past_a_job_it_fails_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met bringing one record up to date must neither end the sweep (the startup sweep's end stopped sjobd's
    start, every time) nor keep the others' ends from being recorded; the job is tried again later (review of H)."""
    monkeypatch.setattr(reaper_module, "RESWEEP_DELAY", 0.1)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        first = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        second = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        reads = log.find_exits
        failures = [ValueError("a bug")]

        def find_exits(job_id: str, unit: str, invocation: str | None = None) -> list[ExitRecord]:
            if job_id == first.id and failures:
                raise failures.pop()
            return reads(job_id, unit, invocation)

        log.find_exits = find_exits  # type: ignore[method-assign]
        log.add(first.id, ExitRecord("exit-code", "exited", 3))
        log.add(second.id, ExitRecord("success", "exited", 0))
        await reaper.sweep()
        assert not failures
        assert service._records.get(second.id).state is JobState.exited  # type: ignore[union-attr]
        while not (service._records.get(first.id) or first).state.finished:  # the sweep after
            await asyncio.sleep(0.02)

    scenario(body, tmp_path, run_commands=False)


def test_an_end_recorded_while_refresh_asks_systemd_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`refresh` reads the record, then asks systemd about the unit. The exit watcher may record the job's end in
    between: the end from the service manager's log (exit 0, for a job nobody stopped) must not replace it (review of
    H: refresh went on with the copy it had read first)."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.manager_exits[job.unit] = ExitRecord("success", "", None, 123)

        async def unit_state(name: str) -> UnitState | None:
            service._ledger.record_exit(job.id, ExitRecord("exit-code", "exited", 3, 77))  # as the watcher does
            return None  # gone

        units.unit_state = unit_state  # type: ignore[method-assign]
        refreshed = await reaper.refresh(job)
        assert (refreshed.exit_status, refreshed.ended_usec) == (3, 77)
        assert service._records.get(job.id) == refreshed

    scenario(body, tmp_path, run_commands=False)


def test_records_are_pruned_when_due_and_at_no_other_time(tmp_path: Path) -> None:
    """Records past their retention go when the longest-ended is due, and at once when a reload changes the
    retention: sjobd no longer wakes every minute to look (issue H: an idle sjobd does not poll)."""

    async def main() -> None:
        units = FakeUnits(FakeJobLog())
        records = JobRecords(tmp_path / "jobs.sqlite")
        retention = [Retention(max_age_usec=10_000_000, per_user=1000)]
        reaper = Reaper(units, units.log, records, Ledger(records, units.log), lambda: retention[0])
        prunes: list[int] = []
        prune = records.prune

        def counted(kept: Retention, now: int) -> int:
            prunes.append(prune(kept, now))
            return prunes[-1]

        records.prune = counted  # type: ignore[method-assign,assignment]

        def ended(job_id: str, seconds_ago: float) -> None:
            job = Job(job_id, f"sjob-{job_id}.service", JobState.exited, 1000, "alice", ["/bin/true"], "/", 1)
            records.insert(job)
            records.update(dataclasses.replace(job, ended_usec=now_usec() - int(seconds_ago * 1e6)))

        ended("0000000a", 8)  # due in 2 s
        pruner = asyncio.create_task(reaper.keep_pruned())
        await asyncio.sleep(0.3)
        assert records.get("0000000a") is not None
        while records.get("0000000a") is not None:
            await asyncio.sleep(0.05)
        ended("0000000b", 9.5)  # nothing was left to be due: the pruner sleeps a whole retention (10 s)
        await asyncio.sleep(1.5)
        assert records.get("0000000b") is not None
        retention[0] = Retention(max_age_usec=1_000_000, per_user=1000)
        reaper.retention_changed()  # as sjobd's reload does
        while records.get("0000000b") is not None:
            await asyncio.sleep(0.05)
        assert prunes == [0, 1, 1]  # at the start, when due, at the reload: never else
        pruner.cancel()
        records.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_stopping_a_job_whose_unit_has_gone_waits_for_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose unit ended and was collected, its end not yet recorded (no exit record yet, or none coming):
    `sjob list --running` shows it, and `sjob stop` said "no job with id" (systemd's NoSuchUnit for StopUnit; seen
    in CI). Now the stop returns the job, nobody having stopped it, and its end comes as for any other."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 1_000_000)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))  # it ran, and its unit went
        # Still starting (systemd has not made the unit yet, review of H): the stop says so, and changes nothing.
        records = service._records
        records.update(dataclasses.replace(job, state=JobState.starting))
        with pytest.raises(SjobError) as starting:
            await service.stop(ALICE, job.id)
        hint = f"stop it again in a moment: sjob stop {job.id}"
        assert (starting.value.code, starting.value.hint) == (ErrorCode.Busy, hint)
        assert (await service.status(ALICE, job.id)).stopped_by is None
        records.update(dataclasses.replace(job, state=JobState.running))
        log.manager_exits[job.unit] = ExitRecord("success", "", None, 123)
        stopping = await service.stop(ALICE, job.id)  # within the grace for its exit record: not ended yet
        assert (stopping.state.finished, stopping.stopped_by) == (False, None)
        await asyncio.sleep(1.1)
        ended = await service.status(ALICE, job.id)
        assert (ended.state, ended.exit_status, ended.stopped_by) == (JobState.exited, 0, None)

    scenario(body, tmp_path, run_commands=False, refuse_gone=True)


def test_a_signal_for_a_stopping_job_reaches_its_main_process_only(tmp_path: Path) -> None:
    """`sjob stop --signal` reaches all the job's processes, as systemctl kill does; once the unit is stopping,
    its main process only: the unit's exit report (root's ExecStopPost, in the same cgroup) may be running, and a
    SIGKILL or SIGSTOP from the job's owner would lose or hold up the record of how the job ended."""

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        running = UnitState(job.unit, "loaded", "active", "running", "success", 5, 0, 0, 0, 0, "")
        units.states[job.unit] = running
        await service.stop(ALICE, job.id, signo=signal.SIGUSR1)
        units.states[job.unit] = dataclasses.replace(running, active_state="deactivating", sub_state="stop-sigterm")
        with pytest.raises(SjobError) as e:  # the fake has no process: as systemd, it refuses
            await service.stop(ALICE, job.id, signo=signal.SIGSTOP)
        units.states[job.unit] = dataclasses.replace(
            running, active_state="deactivating", sub_state="stop-post", main_pid=0, control_pid=8
        )
        with pytest.raises(SjobError) as again:
            await service.stop(ALICE, job.id, signo=signal.SIGKILL)
        assert units.calls[-2:] == ["kill SIGUSR1", "kill main SIGSTOP"]
        for error in (e.value, again.value):
            assert error.code is ErrorCode.InvalidArgument
            assert (
                error.message
                == f"job {job.id} is ending its run: its command has exited, and no signal reaches what is left of it"
            )

    scenario(body, tmp_path, run_commands=False)


def test_the_managers_log_tells_a_clean_end_as_exit_0_only_for_a_job_nobody_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd logs a clean end of the main process (exit 0, or SIGTERM and its like) at debug level only: a unit
    gone without its exit record, which ended "success" with no exit logged, exited 0 if nobody stopped it; if
    somebody did (a caller, or its forwarder at the output quota), the SIGTERM may have ended it, and nothing says
    which."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        alone = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        stopped = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        units.states[stopped.unit] = UnitState(
            stopped.unit, "loaded", "active", "running", "success", 5, 0, 0, 0, 0, ""
        )
        await service.stop(ALICE, stopped.id)
        over = await service.start(ALICE, JobSpec(["/bin/sleep", "60"], "/"))
        log.add(over.id, QuotaRecord(1000, "stop"))  # its forwarder stopped it, with a SIGTERM
        for job in (alone, stopped, over):
            log.manager_exits[job.unit] = ExitRecord("success", "", None, 123)
            units.states.pop(job.unit, None)
        ended = await service.status(ALICE, alone.id)
        assert (ended.state, ended.exit_status, ended.signal) == (JobState.exited, 0, None)
        ended = await service.status(ALICE, over.id)
        assert (ended.exit_status, ended.signal) == (None, None)
        ended = await service.status(ALICE, stopped.id)
        assert (ended.state, ended.exit_status, ended.signal, ended.message) == (
            JobState.stopped,
            None,
            None,
            "stopped by alice",
        )

    scenario(body, tmp_path, run_commands=False)


def test_killed_by_sigterm_is_never_exit_0(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/sh", "-c", "kill -TERM $$"], "/"))
        _, final = await collect(service, ALICE, job.id)
        assert (final.state, final.exit_status, final.signal) == (JobState.stopped, None, 15)
        assert final.shell_status == 143

    scenario(body, tmp_path)


def test_log_selection_and_resumption(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        for seq, (stream, data) in enumerate([("stdout", b"a\n"), ("stderr", b"b\n"), ("stdout", b"c")], 1):
            log.add(job.id, OutputRecord(seq, stream, data, when_usec=1000 + seq))
        running = [i async for i in service.follow(ALICE, job.id, wait=False)]
        assert isinstance(running[-1], Job)
        assert running[-1].state is JobState.running
        assert [(o.stream.value, o.data, o.seq, o.usec) for o in running if isinstance(o, Chunk)] == [
            ("stdout", b"a\n", 1, 1001),
            ("stderr", b"b\n", 2, 1002),
            ("stdout", b"c", 3, 1003),
        ]
        only_err = [i async for i in service.follow(ALICE, job.id, wait=False, streams=[Stream.stderr])]
        assert [o.data for o in only_err if isinstance(o, Chunk)] == [b"b\n"]
        after = [i async for i in service.follow(ALICE, job.id, wait=False, after_seq=2)]
        assert [o.data for o in after if isinstance(o, Chunk)] == [b"c"]

    scenario(body, tmp_path, run_commands=False)


def test_resources_from_the_exit_record(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        job = await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        used = Resources(cpu_usec=1500, memory_peak_bytes=4096, io_read_bytes=0, io_write_bytes=10, tasks_peak=None)
        log.add(job.id, ExitRecord("success", "exited", 0, when_usec=7, resources=used))
        _, final = await collect(service, ALICE, job.id)
        assert final.resources == used
        assert (await service.status(ALICE, job.id)).resources == used

    scenario(body, tmp_path, run_commands=False)


def test_units_without_records_are_adopted_once(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        name = "sjob-0badc0de.service"
        units.states[name] = dataclasses.replace(
            failed_unit(name, 0, 0, "success", active="active"),
            exec_start_argv=("/opt/sjob/bin/sjob-shim", "--check=seccomp", "0badc0de", "--", "/bin/sleep", "60"),
            working_directory="/srv",
            exec_main_start_usec=99,
        )
        units.states["sjob-not-ours.service"] = failed_unit("sjob-not-ours.service", 0, 0, "success")
        await reaper.reconcile()
        await reaper.reconcile()
        (adopted,) = service.list_jobs(ROOT, everyone=True)
        assert (adopted.id, adopted.argv, adopted.cwd, adopted.uid) == ("0badc0de", ["/bin/sleep", "60"], "/srv", 1000)
        assert adopted.state is JobState.running

    scenario(body, tmp_path, run_commands=False)


def test_a_users_slice_gets_its_caps_once_until_the_policy_changes(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        for _ in range(3):
            await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        assert [u.name for u in units.property_sets] == ["sjob-u1000.slice"]  # one D-Bus round trip, not three
        await service.start(BOB, JobSpec(["/bin/true"], "/"))
        policy = service._access.policy
        service.set_policy(dataclasses.replace(policy, per_user=Limits(tasks_max=99)), service.profiles)
        await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        assert [u.name for u in units.property_sets] == ["sjob-u1000.slice", "sjob-u1001.slice", "sjob-u1000.slice"]
        assert units.property_sets[-1].get("TasksMax") == 99

    scenario(body, tmp_path)


def test_usage_is_the_callers_running_jobs_accounting(tmp_path: Path) -> None:
    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        running = await service.start(ALICE, JobSpec(["/bin/sleep", "30"], "/"))
        ended = await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        await collect(service, ALICE, ended.id)
        units.usages[running.unit] = UnitUsage(cpu_usec=5, memory_bytes=4096, tasks=2, io_read_bytes=7)
        (usage,) = await service.usage(ALICE)
        assert (usage.job.id, usage.cpu_usec, usage.memory_bytes, usage.tasks, usage.io_read_bytes) == (
            running.id,
            5,
            4096,
            2,
            7,
        )
        assert usage.io_write_bytes is None
        assert 0 < usage.sampled_usec <= time.monotonic_ns() // 1000
        assert await service.usage(BOB) == []  # someone else's jobs are not there at all
        assert [u.job.id for u in await service.usage(ROOT, everyone=True)] == [running.id]
        with pytest.raises(SjobError) as denied:
            await service.usage(BOB, everyone=True)
        assert denied.value.code is ErrorCode.PermissionDenied
        units.states.pop(running.unit)  # its unit went away between the list and the sample
        assert await service.usage(ALICE) == []
        await service.stop(ALICE, running.id)

    scenario(body, tmp_path)


def test_a_start_systemd_calls_failed_after_the_command_ran_is_a_job_that_ran(tmp_path: Path) -> None:
    """Seen on systemd 252 in a loaded VM: `sjob run -d -- sh -c 'exit 5'` was refused as "could not start"
    because its start job ended "failed", its exit having been handled before its start. It ran."""

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        units.start_result = "failed"
        units.run_commands = False
        exited = UnitState("sjob-x.service", "loaded", "failed", "failed", "exit-code", 0, 1, 5, 1234, 1300, "")
        units.unit_state = lambda name: _state_of(dataclasses.replace(exited, name=name))  # type: ignore[method-assign]
        job = await service.start(ALICE, JobSpec(["/bin/sh", "-c", "exit 5"], "/"))
        assert (job.state, job.started_usec) == (JobState.running, 1234)
        for status in (203, 126):  # systemd's setup failures and the shim's refusals still could not start
            exited = dataclasses.replace(exited, exec_main_status=status)
            with pytest.raises(SjobError) as e:
                await service.start(ALICE, JobSpec(["/bin/true"], "/"))
            assert e.value.code is ErrorCode.StartFailed

    scenario(body, tmp_path)


def test_a_start_systemd_does_not_answer_in_time_fails_and_its_unit_is_stopped(tmp_path: Path) -> None:
    """systemd may start a unit yet whose start it did not answer in time (PID 1 busy or hung): the job is recorded
    as failed, as the record is then (a stop meanwhile says who stopped it), and its unit is stopped, so that a job
    recorded as failed never runs (review of H)."""

    async def body(service: JobService, reaper: Reaper, units: FakeUnits, log: FakeJobLog) -> None:
        answer = asyncio.Event()

        async def no_answer(unit: UnitProperties, aux: Sequence[UnitProperties] = ()) -> str:
            units.started.append(unit)
            await answer.wait()
            raise NoAnswerError("systemd did not answer StartTransientUnit within 25s", hint="try again")

        units.start_transient = no_answer  # type: ignore[method-assign]
        start = asyncio.create_task(service.start(ALICE, JobSpec(["/bin/true"], "/")))
        while not units.started:
            await asyncio.sleep(0.01)
        unit = units.started[-1].name
        job_id = unit.removeprefix("sjob-").removesuffix(".service")
        await service.stop(ALICE, job_id)
        answer.set()
        with pytest.raises(NoAnswerError):
            await start
        job = await service.status(ALICE, job_id)
        assert (job.state, job.stopped_by) == (JobState.failed, ALICE.name)
        assert "did not answer" in (job.message or "")
        while units.stopped.count(unit) < 2:  # the caller's stop, then the launcher's
            await asyncio.sleep(0.01)
        # Nobody stopped it: sjobd did, as its record says, should its exit record come after all.
        with pytest.raises(NoAnswerError):
            await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        unanswered = units.started[-1].name.removeprefix("sjob-").removesuffix(".service")
        assert (await service.status(ALICE, unanswered)).stopped_by == "sjobd"
        while f"sjob-{unanswered}.service" not in units.stopped:
            await asyncio.sleep(0.01)
        # Unanswered before the start was asked for (the user's slice): nothing to stop, nobody stopped it.
        service._launcher._slices.clear()

        async def slice_unanswered(unit: UnitProperties) -> None:
            raise NoAnswerError("systemd did not answer SetUnitProperties within 25s", hint="try again")

        units.set_properties = slice_unanswered  # type: ignore[method-assign]
        stops = len(units.stopped)
        with pytest.raises(NoAnswerError):
            await service.start(ALICE, JobSpec(["/bin/true"], "/"))
        (never,) = [j for j in service.list_jobs(ALICE) if j.message and "SetUnitProperties" in j.message]
        assert (never.state, never.stopped_by) == (JobState.failed, None)
        await asyncio.sleep(0.05)
        assert len(units.stopped) == stops

    scenario(body, tmp_path)


async def _state_of(state: UnitState) -> UnitState:
    return state
