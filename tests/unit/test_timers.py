"""Timers (issue J): the schedule's checks and the timer unit it becomes, and timers over the fakes (which fire a
timer's service as systemd does): runs recorded as jobs of their own, listing, removal, the policy's say."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor import ledger as ledger_module
from supervisor import reaper as reaper_module
from supervisor import timerunits
from supervisor.auth import Principal, TokenIdentity
from supervisor.errors import ErrorCode, NoAnswerError, SjobError
from supervisor.logformat import ExitRecord, StartRecord
from supervisor.policy import Action
from supervisor.properties import UnitProperties
from supervisor.protocol import JobSpec, JobState, Limits, Retry, Schedule, TimerState
from supervisor.units import UnitState

from .fakes import FakeJobLog
from .schedworld import ALICE, BOB, World, world

SECOND = 1_000_000


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]], **rule: Any) -> None:
    async def main() -> None:
        async with world(tmp_path, **rule) as w:
            await asyncio.wait_for(body(w), 30)

    asyncio.run(main())


@pytest.mark.parametrize(
    "spec",
    ["Mon..Fri 02:00", "daily", "*:0/15", "2025-01-01 00:00:00 Europe/Berlin", "Sat,Sun 10:00", "*-*-* 4:00:00 UTC"],
)
def test_calendar_events_as_systemd_writes_them_are_accepted(spec: str) -> None:
    assert timerunits.validate(Schedule(on_calendar=f" {spec} ")).on_calendar == spec


@pytest.mark.parametrize("spec", ["daily\nExecStart=/bin/sh", 'daily"', "daily\\", "", "x" * 201, "%h daily"])
def test_what_could_change_the_unit_file_is_no_calendar_event(spec: str) -> None:
    with pytest.raises(SjobError) as e:
        timerunits.validate(Schedule(on_calendar=spec))
    assert e.value.code is ErrorCode.InvalidArgument
    assert "systemd-analyze calendar" in (e.value.hint or "")


def test_a_schedule_needs_a_time_in_range() -> None:
    for schedule in (Schedule(), Schedule(on_active_usec=0), Schedule(on_unit_active_usec=11 * 366 * 86400 * SECOND)):
        with pytest.raises(SjobError):
            timerunits.validate(schedule)
    # systemd counts OnUnitActiveSec= from the service's last start: alone, the first run comes as long after.
    assert timerunits.validate(Schedule(on_unit_active_usec=5 * SECOND)) == Schedule(None, 5 * SECOND, 5 * SECOND)


def test_the_timer_unit() -> None:
    schedule = Schedule("Mon..Fri 02:00", 10 * SECOND, 60 * SECOND)
    unit = timerunits.timer_unit("sjob-1a2b3c4d.timer", schedule, "sjob timer 1a2b3c4d by alice")
    assert dict(unit.properties) == {
        "Description": "sjob timer 1a2b3c4d by alice",
        "AccuracyUSec": SECOND,
        "RemainAfterElapse": False,
        "TimersCalendar": [("OnCalendar", "Mon..Fri 02:00")],
        "TimersMonotonic": [("OnActiveSec", 10 * SECOND), ("OnUnitActiveSec", 60 * SECOND)],
    }
    assert [s for _, s, _ in unit.signed()] == ["s", "t", "b", "a(ss)", "a(st)"]


def test_a_timer_runs_again_and_each_run_is_a_job(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.units.time_scale = 0.02  # 5 s become 0.1 s
        spec = JobSpec(["/bin/sh", "-c", "echo tick"], "/")
        timer = await w.timers.schedule(
            ALICE, spec, Schedule(on_active_usec=5 * SECOND, on_unit_active_usec=5 * SECOND)
        )
        assert (timer.state, timer.unit, timer.runs) == (TimerState.active, f"sjob-{timer.id}.timer", 0)
        assert timer.next_usec is not None
        timer_unit, service = w.units.started[-1], w.units.started[-1]
        assert timer_unit.name == timer.unit
        async with asyncio.timeout(10):
            while len(runs := [j for j in w.jobs.list_jobs(ALICE) if j.timer == timer.id]) < 2:
                await asyncio.sleep(0.02)
        assert service is not None
        for run_job in runs[:2]:
            ended = await w.until(run_job.id, JobState.exited)
            assert (ended.unit, ended.argv, ended.invocation is not None) == (
                f"sjob-{timer.id}.service",
                spec.argv,
                True,
            )
            data, _, final = await w.output(ALICE, run_job.id)
            assert (data, final.state) == (b"tick\n", JobState.exited)  # its own run's output, not the others'
        assert len({r.invocation for r in runs}) == len(runs)
        (listed,) = await w.timers.list_timers(ALICE)
        assert listed.runs >= 2
        assert listed.last_job in {r.id for r in await_all(w)}
        assert listed.last_usec is not None
        removed = await w.timers.remove(ALICE, timer.id)
        assert (removed.state, removed.removed_by, removed.message) == (TimerState.removed, "alice", "removed by alice")
        assert timer.unit in w.units.stopped
        assert (await w.timers.remove(ALICE, timer.id)).state is TimerState.removed  # again: nothing to do
        allowed = [(e.action, e.allowed) for e in w.audit.entries if e.job_id == timer.id]
        assert allowed == [("schedule", True), ("stop", True)]  # the same process asking again: once a minute

    run(tmp_path, body)


def await_all(w: World) -> list[Any]:
    return w.jobs.list_jobs(ALICE)


def test_a_one_off_timer_elapses(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        timer = await w.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_active_usec=SECOND))
        async with asyncio.timeout(10):
            while (listed := (await w.timers.list_timers(ALICE))[0]).runs < 1 or listed.state is TimerState.active:
                await asyncio.sleep(0.02)
        assert (listed.id, listed.state, listed.runs) == (timer.id, TimerState.elapsed, 1)

    run(tmp_path, body)


def test_the_policy_says_who_may_schedule_and_how_many(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        spec = JobSpec(["/bin/true"], "/")
        daily = Schedule(on_calendar="daily")
        await w.timers.schedule(ALICE, spec, daily)
        with pytest.raises(SjobError) as e:
            await w.timers.schedule(ALICE, spec, daily)
        assert (e.value.code, e.value.message) == (
            ErrorCode.TooManyJobs,
            "you have 1 timers; policy rule 'local users' allows at most 1",
        )
        token = Principal(1001, 1001, 3, "bob", token=TokenIdentity("ci", "t1", frozenset({"run", "schedule"})))
        with pytest.raises(SjobError) as e:
            await w.timers.schedule(token, spec, daily)
        assert e.value.message == "token:ci may not make timers: tokens may not make timers"
        with pytest.raises(SjobError) as e:
            await w.timers.schedule(BOB, dataclasses.replace(spec, retry=Retry(1)), daily)
        assert e.value.code is ErrorCode.InvalidArgument
        bobs = await w.timers.schedule(BOB, spec, daily)
        with pytest.raises(SjobError) as e:
            await w.timers.remove(ALICE, bobs.id)  # someone else's timer looks missing
        assert e.value.code is ErrorCode.NoSuchJob
        # A reload that takes `schedule` away removes the timers made under it.
        rule = w.access.policy.rules[-1]
        w.rules(actions=rule.actions - {Action.schedule})
        await w.timers.recheck()
        assert {t.state for t in await w.timers.list_timers(BOB)} == {TimerState.removed}
        assert (await w.timers.list_timers(BOB))[0].message is not None

    run(tmp_path, body, max_timers=1)


def test_a_calendar_spec_systemd_refuses_makes_no_timer(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        async def refuse(unit: UnitProperties, aux: Any = ()) -> str:
            raise SjobError(ErrorCode.InvalidArgument, "systemd refused StartTransientUnit: Invalid calendar spec")

        w.units.start_transient = refuse  # type: ignore[method-assign]
        with pytest.raises(SjobError) as e:
            await w.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_calendar="Mon..Fri 25:00"))
        assert "Invalid calendar spec" in e.value.message
        assert await w.timers.list_timers(ALICE) == []

    run(tmp_path, body)


def test_a_timer_systemd_did_not_answer_in_time_is_stopped(tmp_path: Path) -> None:
    """systemd may make a timer yet whose start it did not answer in time: without a record nothing would manage it
    (no stop, no policy check, its runs not recorded), so its units are stopped (review of H)."""

    async def body(w: World) -> None:
        async def no_answer(unit: UnitProperties, aux: Any = ()) -> str:
            w.units.started.append(unit)
            raise NoAnswerError("systemd did not answer StartTransientUnit within 25s", hint="try again")

        w.units.start_transient = no_answer  # type: ignore[method-assign]
        with pytest.raises(SjobError) as e:
            await w.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_calendar="daily"))
        assert "did not answer" in e.value.message
        assert await w.timers.list_timers(ALICE) == []
        timer = w.units.started[-1].name
        async with asyncio.timeout(10):
            while not {timer, timer.replace(".timer", ".service")} <= set(w.units.stopped):
                await asyncio.sleep(0.01)

    run(tmp_path, body)


def test_a_run_that_cannot_be_recorded_does_not_end_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording a run's end opens a journal reader (for the quota record), which fails with EMFILE while users'
    followers hold sjobd's descriptors: that ended the timers' run watcher, and with it sjobd (review of H). It goes
    on, the runs after are recorded, and the sweep that follows records the end it missed."""
    monkeypatch.setattr(reaper_module, "RESWEEP_DELAY", 0.1)

    async def body(w: World) -> None:
        w.units.time_scale = 0.02  # 5 s become 0.1 s
        quota = w.log.find_quota
        failures = [OSError(errno.EMFILE, "Too many open files")]

        def find_quota(job_id: str, unit: str, owner_uid: int | None, invocation: str | None = None) -> Any:
            if failures:
                raise failures.pop()
            return quota(job_id, unit, owner_uid, invocation)

        w.log.find_quota = find_quota  # type: ignore[method-assign]
        spec = JobSpec(["/bin/true"], "/")
        timer = await w.timers.schedule(
            ALICE, spec, Schedule(on_active_usec=5 * SECOND, on_unit_active_usec=5 * SECOND)
        )
        async with asyncio.timeout(20):
            while len(runs := [j for j in w.jobs.list_jobs(ALICE) if j.timer == timer.id]) < 3 or any(
                j.state is not JobState.exited
                for j in runs[-2:]  # the first two, listed newest first
            ):
                await asyncio.sleep(0.02)
        assert not failures

    run(tmp_path, body)


def test_a_timer_whose_record_was_lost_is_stopped_at_start(tmp_path: Path) -> None:
    """Records lost, or set aside as damaged (statedb): a timer systemd still has would fire for ever with nobody
    able to stop it, its runs unrecorded and its maker's rights never checked again. sjobd stops it at a start whose
    records began anew (review of H), and only then: another sjobd, with records of its own, must leave it alone."""

    async def main() -> None:
        async with world(tmp_path) as before:
            timer = await before.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_calendar="daily"))
            units, log = before.units, before.log
            units.close = _nothing  # type: ignore[method-assign]  # systemd goes on as sjobd stops
            before.records._db.execute("DELETE FROM timers WHERE id = ?", [timer.id])  # records that are not its
        async with world(tmp_path, log=log, units=units) as same:
            await asyncio.sleep(0.2)  # a stop would have been made by now: stop_later is a task of a turn or two
            assert timer.unit not in same.units.stopped
        # Records restored with sqlite3's .dump: version 0, their tables there. Not begun anew: the timer is kept.
        restored = sqlite3.connect(tmp_path / "jobs.sqlite")
        restored.execute("PRAGMA user_version = 0")
        restored.close()
        async with world(tmp_path, log=log, units=units) as dumped:
            await asyncio.sleep(0.2)
            assert timer.unit not in dumped.units.stopped
        async with world(tmp_path / "lost", log=log, units=units) as anew:
            async with asyncio.timeout(10):
                while timer.unit not in anew.units.stopped:
                    await asyncio.sleep(0.01)

    asyncio.run(main())


async def _nothing() -> None:
    pass


def test_the_timer_remembers_who_made_it(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        timer = await w.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_calendar="daily"))
        raw = w.records.timer_principal(timer.id)
        assert raw is not None
        assert json.loads(raw)["user"] == "alice"

    run(tmp_path, body)


def test_stop_of_someone_elses_job_is_audited_once_and_truly(tmp_path: Path) -> None:
    """`sjob stop ID` asks for a timer by ID only after Stop found no job of the caller's: for someone else's job
    the audit keeps Stop's one true entry, not a second one saying there is no such job."""

    async def body(w: World) -> None:
        job = await w.jobs.start(ALICE, JobSpec(argv=["/bin/sleep", "30"], cwd="/"))
        for attempt in (w.jobs.stop(BOB, job.id), w.timers.remove(BOB, job.id)):
            with pytest.raises(SjobError) as e:
                await attempt
            assert e.value.code is ErrorCode.NoSuchJob
        denied = [(e.action, e.reason) for e in w.audit.entries if e.job_id == job.id and not e.allowed]
        assert denied == [("stop", "the job belongs to another user")]
        with pytest.raises(SjobError):
            await w.timers.remove(BOB, "0badc0de")  # neither a job nor a timer: refused and audited as one
        assert [(e.action, e.allowed) for e in w.audit.entries if e.job_id == "0badc0de"] == [("stop", False)]
        await w.jobs.stop(ALICE, job.id, grace_usec=0)

    run(tmp_path, body)


def staff_may_use_the_network(w: World) -> None:
    """A policy (reloaded) where the group staff may run jobs with network and everyone else only strict ones."""
    everyone = w.access.policy.rules[-1]
    staff = dataclasses.replace(everyone, name="staff", users=frozenset(), groups=frozenset({"staff"}))
    strict = dataclasses.replace(everyone, profiles=dataclasses.replace(everyone.profiles, allowed=("strict",)))
    w.jobs.set_policy(dataclasses.replace(w.access.policy, rules=(staff, strict)), w.jobs.profiles)


def test_a_timer_is_checked_at_each_run_as_its_maker_is_then(tmp_path: Path) -> None:
    """Review of J: a timer was checked again for `schedule` and `run` only, and as its maker was when they made
    it; it is now checked as a new one would be (profile, limits) at every reload and every run, with its maker's
    groups of now."""

    async def body(w: World) -> None:
        staff_may_use_the_network(w)
        w.units.time_scale = 0.02
        spec = JobSpec(["/bin/true"], "/", profile="network")
        every = Schedule(on_active_usec=5 * SECOND, on_unit_active_usec=5 * SECOND)
        timer = await w.timers.schedule(ALICE, spec, every)
        async with asyncio.timeout(10):
            while (await w.timers.list_timers(ALICE))[0].runs < 1:
                await asyncio.sleep(0.02)
        w.users["alice"] = dataclasses.replace(w.users["alice"], groups=frozenset({"alice"}))  # out of staff
        async with asyncio.timeout(10):
            while (listed := (await w.timers.list_timers(ALICE))[0]).state is TimerState.active:
                await asyncio.sleep(0.02)
        assert (listed.id, listed.state, listed.removed_by) == (timer.id, TimerState.removed, "policy")
        assert listed.message is not None
        assert "the profile 'network' is not allowed" in listed.message
        assert timer.unit in w.units.stopped
        assert [(e.action, e.allowed) for e in w.audit.entries if not e.allowed] == [("run", False)]

    run(tmp_path, body)


def test_a_reload_that_lowers_a_limit_below_a_timers_removes_it(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        spec = JobSpec(["/bin/true"], "/", limits=Limits(memory_max=1 << 30))
        small = JobSpec(["/bin/true"], "/", limits=Limits(memory_max=128 << 20))
        kept = await w.timers.schedule(BOB, small, Schedule(on_calendar="daily"))
        timer = await w.timers.schedule(ALICE, spec, Schedule(on_calendar="daily"))
        rule = w.access.policy.rules[-1]
        lower = dataclasses.replace(rule.limits.maximum, memory_max=512 << 20)
        default = dataclasses.replace(rule.limits.default, memory_max=256 << 20)
        w.rules(limits=dataclasses.replace(rule.limits, maximum=lower, default=default))
        await w.timers.recheck()
        (gone,) = await w.timers.list_timers(ALICE)
        assert (gone.id, gone.state) == (timer.id, TimerState.removed)
        assert gone.message is not None
        assert "memory" in gone.message
        # Within the new limits; its runs have the limits it was made with, so the defaults it was given then
        # count too (one made with none would have had the old default of 2G: above the new ceiling, removed).
        assert [(t.id, t.state) for t in await w.timers.list_timers(BOB)] == [(kept.id, TimerState.active)]

    run(tmp_path, body)


def test_stopping_a_timers_run_that_is_over_leaves_its_next_run_alone(tmp_path: Path) -> None:
    """Review of J: `sjob stop` of a timer's run stopped the timer's service, which may run the next run by then."""

    async def body(w: World) -> None:
        timer = await w.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_calendar="daily"))
        first = w.timers._new_run(timer, "a" * 32, time.time_ns() // 1000, started=True)
        service = first.unit
        running = UnitState(service, "loaded", "active", "running", "success", 1, 0, 0, 0, 0, "")
        w.units.states[service] = dataclasses.replace(running, invocation_id="b" * 32)  # the next run
        assert not (await w.jobs.stop(ALICE, first.id)).state.finished  # its exit record is still to come
        assert service not in w.units.stopped
        assert (await w.jobs.stop(ALICE, first.id, signo=9)).id == first.id
        assert w.units.signalled == []
        w.units.states[service] = dataclasses.replace(running, invocation_id="a" * 32)  # it is the run systemd runs
        await w.jobs.stop(ALICE, first.id)
        assert service in w.units.stopped

    run(tmp_path, body)


def test_a_run_its_maker_may_no_longer_have_is_stopped_as_it_begins(tmp_path: Path) -> None:
    """Review of J: systemd starts a timer's run before sjobd can check it; a run the check refuses is stopped at
    once, not left running with rights its maker has lost."""

    async def body(w: World) -> None:
        staff_may_use_the_network(w)
        w.units.time_scale = 0.02
        # It ignores SIGTERM: the stop does not wait out a grace period for it (review: a trap kept it for 90 s).
        spec = JobSpec(["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"], "/", profile="network")
        timer = await w.timers.schedule(ALICE, spec, Schedule(on_active_usec=50 * SECOND))  # in 1 s
        w.users["alice"] = dataclasses.replace(w.users["alice"], groups=frozenset({"alice"}))  # out of staff
        async with asyncio.timeout(10):
            while not (runs := [j for j in w.jobs.list_jobs(ALICE) if j.timer == timer.id]):
                await asyncio.sleep(0.02)
        ended = await w.until(runs[0].id, JobState.stopped)
        assert (ended.stopped_by, ended.signal) == ("policy", 9)
        (listed,) = await w.timers.list_timers(ALICE)
        assert (listed.state, listed.removed_by) == (TimerState.removed, "policy")

    run(tmp_path, body)


def test_a_grace_period_on_a_timers_run_leaves_its_service_able_to_fork(tmp_path: Path) -> None:
    """Review of J: a stop with --grace set TasksMax=1 on the unit between its SIGKILLs; a timer's service keeps it
    for every later run, which could then not fork. (The fake has no processes left over after the main one, so
    no kill of the rest: test_jobs' test_the_grace_periods_sigkill_never_reaches_the_exit_report has those.)"""

    async def body(w: World) -> None:
        w.units.time_scale = 0.02
        spec = JobSpec(["/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], "/")
        timer = await w.timers.schedule(ALICE, spec, Schedule(on_active_usec=5 * SECOND))
        async with asyncio.timeout(10):
            while not (runs := [j for j in w.jobs.list_jobs(ALICE) if j.timer == timer.id]) or not any(
                r.data == b"ready\n" for r in w.log.records.get(timer.id, []) if hasattr(r, "data")
            ):
                await asyncio.sleep(0.02)
        await w.jobs.stop(ALICE, runs[0].id, grace_usec=200_000)
        ended = await w.until(runs[0].id, JobState.stopped)
        assert ended.signal == 9
        assert "set TasksMax=1" not in w.units.calls

    run(tmp_path, body)


def test_a_run_that_ended_unreported_while_sjobd_was_down_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timer's run started and ended while sjobd was down, and its exit report was lost (a daemon-reload on systemd
    < 257). The restarted sjobd records the run from its start record after its startup sweep, and no signal from
    systemd is coming for it: the run must end all the same, from the service manager's log once the grace for its
    record is over (review of H: it stayed running)."""
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 200_000)
    monkeypatch.setattr(reaper_module, "ENDED_LOOK_DELAY", 0.01)

    async def main() -> None:
        log = FakeJobLog()
        async with world(tmp_path, log=log) as w:
            timer = await w.timers.schedule(ALICE, JobSpec(["/bin/true"], "/"), Schedule(on_calendar="yearly"))
            units = w.units
        log.add(timer.id, StartRecord(attempt=1), "a" * 32, uid=ALICE.uid)  # systemd ran it meanwhile
        log.manager_exits[f"sjob-{timer.id}.service"] = ExitRecord("exit-code", "exited", 4, 123)
        async with world(tmp_path, log=log, units=units) as w:
            while not (runs := [j for j in w.records.list_jobs() if j.timer == timer.id]):
                await asyncio.sleep(0.01)
            ended = await w.until(runs[0].id, JobState.failed)
            assert (ended.exit_status, ended.invocation) == (4, "a" * 32)

    asyncio.run(asyncio.wait_for(main(), 30))
