"""Timers (issue J): the schedule's checks and the timer unit it becomes, and timers over the fakes (which fire a
timer's service as systemd does): runs recorded as jobs of their own, listing, removal, the policy's say."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor import timerunits
from supervisor.auth import Principal, TokenIdentity
from supervisor.errors import ErrorCode, SjobError
from supervisor.policy import Action
from supervisor.properties import UnitProperties
from supervisor.protocol import JobSpec, JobState, Retry, Schedule, TimerState

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
