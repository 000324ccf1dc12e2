"""The per-user queue (issue J) over the fakes: order, caps, persistence across a restart, stop, follow, the
second check against the policy at the start, and what is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor import ledger as ledger_module
from supervisor.errors import ErrorCode, SjobError
from supervisor.policy import Action
from supervisor.properties import JobStdio
from supervisor.protocol import Input, JobSpec, JobState
from supervisor.queue import Pending

from .fakes import FakeJobLog
from .schedworld import ALICE, BOB, World, world


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]], **rule: Any) -> None:
    async def main() -> None:
        async with world(tmp_path, **rule) as w:
            await asyncio.wait_for(body(w), 30)

    asyncio.run(main())


def waits(path: Path) -> JobSpec:
    """A job that runs until `path` exists: the test says when it ends."""
    return JobSpec(["/bin/sh", "-c", f"while [ ! -e {path} ]; do sleep 0.02; done; echo done {path.name}"], "/")


def test_jobs_beyond_max_jobs_wait_and_start_in_order(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        gates = [tmp_path / f"gate{i}" for i in range(5)]
        jobs = [await w.jobs.start(ALICE, waits(gate), queue=True) for gate in gates]
        assert [j.state for j in jobs] == [JobState.running] * 2 + [JobState.queued] * 3
        assert [j.position for j in jobs[2:]] == [1, 2, 3]
        listed = {j.id: j for j in w.jobs.list_jobs(ALICE)}
        assert [listed[j.id].position for j in jobs[2:]] == [1, 2, 3]
        assert (await w.jobs.status(ALICE, jobs[3].id)).position == 2
        started = []
        for i in (1, 0, 2, 3, 4):  # each end frees a slot: the oldest waiting job takes it
            gates[i].touch()
            await w.until(jobs[i].id, JobState.exited)
            running = [j.id for j in w.records.unfinished(ALICE.uid)]
            started += [r for r in running if r not in started and r not in (jobs[0].id, jobs[1].id)]
        assert started == [j.id for j in jobs[2:]]
        for job in jobs:
            assert (await w.until(job.id, JobState.exited)).state is JobState.exited
        queued = [e for e in w.audit.entries if e.action == "queue"]
        assert [(e.job_id, e.allowed) for e in queued] == [(j.id, True) for j in jobs[2:]]
        # Checked again as each starts: a "run" decision from the queue.
        again = [e for e in w.audit.entries if e.action == "run" and "from the queue" in e.reason]
        assert sorted(e.job_id for e in again if e.job_id) == sorted(j.id for j in jobs[2:])

    run(tmp_path, body, max_jobs=2)


def test_without_queue_a_full_slot_count_is_refused_with_the_way_out(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.jobs.start(ALICE, waits(tmp_path / "gate"))
        with pytest.raises(SjobError) as e:
            await w.jobs.start(ALICE, waits(tmp_path / "gate"))
        assert e.value.code is ErrorCode.TooManyJobs
        assert "--queue" in (e.value.hint or "")
        w.rules(queue_by_default=True)
        assert (await w.jobs.start(ALICE, waits(tmp_path / "gate"))).state is JobState.queued
        # ... but not a job with input: that cannot wait (nor be silently cut off from it).
        r, wr = os.pipe()
        try:
            with pytest.raises(SjobError) as e:
                await w.jobs.start(ALICE, waits(tmp_path / "gate"), JobStdio(r, Input.pipe))
            assert e.value.code is ErrorCode.TooManyJobs
        finally:
            os.close(r)
            os.close(wr)
        (tmp_path / "gate").touch()

    run(tmp_path, body, max_jobs=1)


def test_a_queued_job_takes_no_input(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        r, wr = os.pipe()
        try:
            with pytest.raises(SjobError) as e:
                await w.jobs.start(ALICE, JobSpec(["/bin/cat"], "/"), JobStdio(r, Input.pipe), queue=True)
        finally:
            os.close(r)
            os.close(wr)
        assert e.value.code is ErrorCode.InvalidArgument
        assert "reads no input" in e.value.message
        assert w.units.started == []

    run(tmp_path, body, max_jobs=1)


def test_the_queue_is_capped_and_may_be_forbidden(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        gate = tmp_path / "gate"
        await w.jobs.start(ALICE, waits(gate))
        await w.jobs.start(ALICE, waits(gate), queue=True)
        await w.jobs.start(ALICE, waits(gate), queue=True)
        with pytest.raises(SjobError) as e:
            await w.jobs.start(ALICE, waits(gate), queue=True)
        assert e.value.code is ErrorCode.TooManyJobs
        assert "queue is full: 2 jobs wait" in e.value.message
        denied = [e for e in w.audit.entries if e.action == "queue" and not e.allowed]
        assert len(denied) == 1
        w.rules(actions=w.access.policy.rules[-1].actions - {Action.queue})
        await w.jobs.start(BOB, waits(gate))  # bob has a free slot: no queue needed
        with pytest.raises(SjobError) as e:
            await w.jobs.start(BOB, waits(gate), queue=True)
        assert "may not queue" in e.value.message
        gate.touch()

    run(tmp_path, body, max_jobs=1, max_queued=2)


def test_stopping_a_queued_job_removes_it_and_followers_see_the_start(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        gate = tmp_path / "gate"
        first = await w.jobs.start(ALICE, waits(gate))
        removed = await w.jobs.start(ALICE, JobSpec(["/bin/echo", "never"], "/"), queue=True)
        followed = await w.jobs.start(ALICE, JobSpec(["/bin/echo", "later"], "/"), queue=True)
        follower = asyncio.create_task(w.output(ALICE, followed.id))
        await asyncio.sleep(0.1)
        assert not follower.done()  # it waits for the start
        gone = await w.jobs.stop(ALICE, removed.id)
        assert (gone.state, gone.stopped_by, gone.message) == (
            JobState.stopped,
            "alice",
            "removed from the queue by alice",
        )
        assert (await w.jobs.status(ALICE, followed.id)).position == 1
        gate.touch()
        data, _, final = await follower
        assert (data, final.state) == (b"later\n", JobState.exited)
        await w.until(first.id, JobState.exited)
        assert all(u.name != removed.unit for u in w.units.started)  # it never ran

    run(tmp_path, body, max_jobs=1)


def test_the_queue_survives_a_restart_of_sjobd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "VANISHED_GRACE_USEC", 0)
    gate = tmp_path / "gate"
    log = FakeJobLog()

    async def before() -> list[str]:
        async with world(tmp_path, log, max_jobs=1) as w:
            running = await w.jobs.start(ALICE, waits(gate))
            queued = [await w.jobs.start(ALICE, JobSpec(["/bin/echo", str(i)], "/"), queue=True) for i in range(2)]
            return [running.id, *(j.id for j in queued)]  # and sjobd is gone, all at once

    ids = asyncio.run(before())

    async def after() -> None:
        journal = FakeJobLog()  # the same journal, read anew
        journal.records, journal.invocations, journal.events = log.records, log.invocations, log.events
        async with world(tmp_path, journal, max_jobs=1) as w:
            # At the start the reaper settles the job whose unit vanished (the fakes' processes went with sjobd),
            # which frees the slot; the queue then starts the waiting jobs in order.
            assert (await w.until(ids[0], JobState.unknown)).id == ids[0]
            for job_id in ids[1:]:
                await w.until(job_id, JobState.exited)
            data, _, final = await w.output(ALICE, ids[2])
            assert (data, final.state) == (b"1\n", JobState.exited)
            first, second = (w.records.get(i) for i in ids[1:])
            assert first is not None
            assert second is not None
            assert (first.started_usec or 0) <= (second.started_usec or 0)

    asyncio.run(asyncio.wait_for(after(), 30))


def test_a_queued_job_is_checked_again_when_it_starts(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        gate = tmp_path / "gate"
        await w.jobs.start(ALICE, waits(gate))
        queued = await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/", profile="network"), queue=True)
        w.rules(profiles=dataclasses_replace_profiles(w))
        gate.touch()
        refused = await w.until(queued.id, JobState.failed)
        assert refused.message is not None
        assert refused.message.startswith("not started from the queue: the profile 'network' is not allowed")
        assert all(u.name != queued.unit for u in w.units.started)
        denied = [e for e in w.audit.entries if e.action == "run" and not e.allowed]
        assert [e.job_id for e in denied] == [queued.id]  # the audit names the job refused

    run(tmp_path, body, max_jobs=1)


def dataclasses_replace_profiles(w: World) -> object:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(w.access.policy.rules[-1].profiles, allowed=("strict",))


def test_what_a_queued_job_needs_round_trips() -> None:
    from supervisor.auth import Principal, TokenIdentity  # noqa: PLC0415

    token = TokenIdentity("ci", "abc", frozenset({"run", "queue"}))
    pending = Pending(JobSpec(["/bin/true"], "/srv", ["A=1"]), Principal(1002, 1002, 5, "ci", frozenset({"g"}), token))
    again = Pending.from_json(pending.to_json())
    assert again.spec == pending.spec
    assert again.principal == Principal(1002, 1002, 0, "ci", frozenset({"g"}), token)  # no pid: nothing decides on it


def test_a_queued_job_starts_with_its_owners_groups_of_now(tmp_path: Path) -> None:
    """Review of J: a queued job started on the groups its owner had when they queued it. A group left since
    takes its rights with it; one joined since gives none (the kernel had not vouched for it), and if it changes
    which rule applies, the job is refused."""

    async def body(w: World) -> None:
        everyone = w.access.policy.rules[-1]
        staff = dataclasses.replace(everyone, name="staff", users=frozenset(), groups=frozenset({"staff"}))
        strict = dataclasses.replace(everyone, profiles=dataclasses.replace(everyone.profiles, allowed=("strict",)))
        w.jobs.set_policy(dataclasses.replace(w.access.policy, rules=(staff, strict)), w.jobs.profiles)
        gate = tmp_path / "gate"
        await w.jobs.start(ALICE, waits(gate))
        await w.jobs.start(BOB, waits(gate))
        network = JobSpec(["/bin/true"], "/", profile="network")
        alices = await w.jobs.start(ALICE, network, queue=True)
        with pytest.raises(SjobError, match="the profile 'network' is not allowed"):
            await w.jobs.start(BOB, network, queue=True)  # bob is not in staff
        w.users["alice"] = dataclasses.replace(w.users["alice"], groups=frozenset({"alice"}))  # out of staff
        w.users["bob"] = dataclasses.replace(w.users["bob"], groups=frozenset({"bob", "staff"}))  # into it
        bobs = await w.jobs.start(BOB, JobSpec(["/bin/true"], "/"), queue=True)
        gate.touch()
        refused = await w.until(alices.id, JobState.failed)
        assert refused.message is not None
        assert refused.message.startswith("not started from the queue: the profile 'network' is not allowed")
        # His new group grants nothing to what he asked for before joining it; and as the rule that applies to him
        # now is another than the one he asked under (an admin may have put him there to restrict him), his job
        # does not start either (review of I/J: first match wins, so a group joined may take rights away).
        unsure = await w.until(bobs.id, JobState.failed)
        assert unsure.message == "not started from the queue: the policy rule for bob is now 'staff', not 'local users'"
        gone = dataclasses.replace(w.users["alice"], uid=1234)  # alice's name is now another uid's
        w.users["alice"] = gone
        await w.jobs.start(ALICE, waits(tmp_path / "gate2"))
        later = await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/"), queue=True)
        (tmp_path / "gate2").touch()
        refused = await w.until(later.id, JobState.failed)
        assert refused.message == "not started from the queue: user alice (uid 1000) no longer exists"

    run(tmp_path, body, max_jobs=1)


def test_the_queue_counts_slots_by_the_rule_its_owner_has_now(tmp_path: Path) -> None:
    """Review of J: the queue read max_jobs from the rule of the groups stored at queueing, so a user who left the
    group with more slots kept them for what they had queued."""

    async def body(w: World) -> None:
        everyone = dataclasses.replace(w.access.policy.rules[-1], max_jobs=1)
        staff = dataclasses.replace(everyone, name="staff", users=frozenset(), groups=frozenset({"staff"}), max_jobs=3)
        w.jobs.set_policy(dataclasses.replace(w.access.policy, rules=(staff, everyone)), w.jobs.profiles)
        gates = [tmp_path / f"gate{i}" for i in range(3)]
        running = [await w.jobs.start(ALICE, waits(gate)) for gate in gates]
        queued = await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/"), queue=True)
        assert queued.state is JobState.queued
        w.users["alice"] = dataclasses.replace(w.users["alice"], groups=frozenset({"alice"}))  # out of staff
        gates[0].touch()
        await w.until(running[0].id, JobState.exited)
        await asyncio.gather(*list(w.queue._tasks))  # the round its end began
        assert (w.records.get(queued.id) or queued).state is JobState.queued  # 2 run; her rule now allows 1
        for gate in gates[1:]:
            gate.touch()
        assert (await w.until(queued.id, JobState.exited)).state is JobState.exited

    run(tmp_path, body)


def test_a_rule_that_allows_no_jobs_queues_none(tmp_path: Path) -> None:
    """Review of J's fixes: with max_jobs = 0 a queued job waited for ever; it is refused, when asked and when a
    reload makes it so."""

    async def body(w: World) -> None:
        gate = tmp_path / "gate"
        await w.jobs.start(ALICE, waits(gate))
        queued = await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/"), queue=True)
        w.rules(max_jobs=0)
        with pytest.raises(SjobError) as e:
            await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/"), queue=True)
        assert e.value.code is ErrorCode.TooManyJobs
        refused = await w.until(queued.id, JobState.failed)
        assert (
            refused.message
            == "not started from the queue: policy rule 'local users' allows no running jobs (max_jobs = 0)"
        )
        gate.touch()

    run(tmp_path, body, max_jobs=1)
