"""Retries (issue J): the unit properties, which attempt ends the job, and a retried job over the fakes (which run a
unit again as systemd's Restart= does): every attempt recorded, every attempt's output in order with a marker
between, the policy's say, and a stop between attempts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor import retries
from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError
from supervisor.logformat import ExitRecord
from supervisor.policy import Action
from supervisor.protocol import Job, JobSpec, JobState, Retry, RetryOn
from supervisor.units import UnitState

from .schedworld import ALICE, World, world


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]], **rule: Any) -> None:
    async def main() -> None:
        async with world(tmp_path, **rule) as w:
            await asyncio.wait_for(body(w), 30)

    asyncio.run(main())


def test_a_retry_is_systemds_restart_with_a_start_limit() -> None:
    assert retries.unit_properties(Retry(2, 10_000_000, RetryOn.failure)) == [
        ("Restart", "on-failure"),
        ("RestartUSec", 10_000_000),
        ("StartLimitBurst", 3),  # the first start and two more
        ("StartLimitIntervalUSec", 2**64 - 1),
    ]
    assert retries.unit_properties(Retry(1, on=RetryOn.any))[0] == ("Restart", "always")


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        (Retry(0), "--retry 0: a job can be retried 1 to 100 times"),
        (Retry(101), "--retry 101: a job can be retried 1 to 100 times"),
        (Retry(1, 500_000), "--retry-delay 0.5s is out of range"),
        (Retry(1, 2 * 86400 * 1_000_000), "--retry-delay 172800s is out of range"),
    ],
)
def test_retries_out_of_range_are_refused(retry: Retry, message: str) -> None:
    with pytest.raises(SjobError) as e:
        retries.validate(retry)
    assert (e.value.code, e.value.message) == (ErrorCode.InvalidArgument, message)


@pytest.mark.parametrize(
    ("on", "number", "result", "stopped", "final"),
    [
        (RetryOn.failure, 1, "exit-code", False, False),
        (RetryOn.failure, 2, "exit-code", False, False),
        (RetryOn.failure, 3, "exit-code", False, True),  # the last of 1 + 2
        (RetryOn.failure, 1, "success", False, True),
        (RetryOn.failure, 1, "timeout", False, False),
        (RetryOn.any, 1, "success", False, False),
        (RetryOn.any, 3, "success", False, True),
        (RetryOn.failure, 1, "signal", True, True),  # a stop: systemd starts nothing after it
    ],
)
def test_which_attempt_is_the_last(on: RetryOn, number: int, result: str, stopped: bool, final: bool) -> None:
    assert retries.is_final(Retry(2, on=on), number, result, stopped) is final


def test_a_failing_job_retried_twice_has_three_attempts(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        spec = JobSpec(["/bin/sh", "-c", "echo try; echo oops >&2; exit 3"], "/", retry=Retry(2, 1_000_000))
        job = await w.jobs.start(ALICE, spec)
        (unit,) = w.units.started
        assert dict(unit.properties)["Restart"] == "on-failure"
        data, marks, final = await w.output(ALICE, job.id)
        assert data.count(b"try\n") == 3
        assert marks == [2, 3]  # where the second and third attempts begin
        assert (final.state, final.exit_status) == (JobState.failed, 3)
        assert [(a.number, a.result, a.exit_status) for a in final.attempts or []] == [
            (1, "exit-code", 3),
            (2, "exit-code", 3),
            (3, "exit-code", 3),
        ]
        assert len({a.invocation for a in final.attempts or []}) == 3
        # A replay gives the same, and so do status and the records after the watcher saw every exit again.
        assert await w.output(ALICE, job.id) == (data, marks, final)
        assert (await w.jobs.status(ALICE, job.id)).attempts == final.attempts
        # Resumed after a piece (sjob run after a Ctrl-C): only the marks of attempts whose output is still to come.
        # Each attempt wrote two records: 1-2, 3-4, 5-6.
        assert (await w.output(ALICE, job.id, after_seq=2))[1] == [2, 3]
        assert (await w.output(ALICE, job.id, after_seq=3))[1] == [3]
        assert (await w.output(ALICE, job.id, after_seq=6))[1] == []

    run(tmp_path, body)


def test_a_retried_job_that_succeeds_ends_there(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        marker = tmp_path / "tried"
        script = f"if [ -e {marker} ]; then echo second; else touch {marker}; echo first; exit 1; fi"
        job = await w.jobs.start(ALICE, JobSpec(["/bin/sh", "-c", script], "/", retry=Retry(5)))
        data, marks, final = await w.output(ALICE, job.id)
        assert (data, marks, final.state, final.exit_status) == (b"first\nsecond\n", [2], JobState.exited, 0)
        assert [a.result for a in final.attempts or []] == ["exit-code", "success"]

    run(tmp_path, body)


def test_the_policy_says_who_may_retry_and_how_often(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        with pytest.raises(SjobError) as e:
            await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/", retry=Retry(4)))
        assert e.value.code is ErrorCode.PermissionDenied
        assert e.value.message == "--retry 4 is above the 3 retries policy rule 'local users' allows"
        rule = w.access.policy.rules[-1]
        w.rules(actions=rule.actions - {Action.retry})
        with pytest.raises(SjobError) as e:
            await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/", retry=Retry(1)))
        assert e.value.message.startswith("alice may not have jobs retried")
        assert [(a.action, a.allowed) for a in w.audit.entries] == [("retry", False), ("retry", False)]
        assert w.units.started == []

    run(tmp_path, body, max_retries=3)


def test_stopping_a_job_between_attempts_ends_it_at_once(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.units.time_scale = 10.0  # a long wait before the next attempt: the stop comes in it
        job = await w.jobs.start(ALICE, JobSpec(["/bin/sh", "-c", "exit 1"], "/", retry=Retry(3, 1_000_000)))
        async with asyncio.timeout(10):
            while (state := await w.units.unit_state(job.unit)) is None or state.sub_state != "auto-restart":
                await asyncio.sleep(0.01)
        await w.until(job.id, JobState.running)
        while not (w.records.get(job.id) or job).attempts:
            await asyncio.sleep(0.01)  # the first attempt's exit record, through the watcher
        stopped = await w.jobs.stop(ALICE, job.id)
        assert (stopped.state, stopped.message) == (JobState.stopped, "stopped by alice before attempt 2")
        assert [a.number for a in stopped.attempts or []] == [1]

    run(tmp_path, body)


def test_an_exit_record_counts_once_whoever_brings_it(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.units.run_commands = False
        job = await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/", retry=Retry(1)))
        first = ExitRecord("exit-code", "exited", 1, when_usec=5, invocation="a" * 32)
        for _ in range(3):  # the watcher, a follower and the sweep
            w.jobs._ledger.record_exit(job.id, first)
        recorded = w.records.get(job.id)
        assert recorded is not None
        assert (recorded.state, [a.number for a in recorded.attempts or []]) == (JobState.running, [1])
        last = dataclasses.replace(first, result="success", exit_code="exited", exit_status=0, invocation="b" * 32)
        ended: Job | None = w.jobs._ledger.record_exit(job.id, last)
        assert ended is not None
        assert (ended.state, [a.number for a in ended.attempts or []]) == (JobState.exited, [1, 2])

    run(tmp_path, body)


def test_after_the_last_attempt_the_wait_for_another_is_cut_short(tmp_path: Path) -> None:
    """systemd waits RestartSec= after a failed last attempt, only to refuse the start (start-limit-hit): once the
    job has ended, collecting its unit stops that wait, so a long --retry-delay leaves no unit behind."""

    async def body(w: World) -> None:
        name = "sjob-0000abcd.service"
        w.units.states[name] = UnitState(name, "loaded", "activating", "auto-restart", "exit-code", 0, 1, 1, 0, 0, "")
        w.reaper.collect_later(name)
        async with asyncio.timeout(5):
            while name not in w.units.stopped:
                await asyncio.sleep(0.01)

    run(tmp_path, body)


@pytest.mark.parametrize(("stop_post", "stop_delay"), [(0.0, 0.0), (0.3, 0.0), (0.3, 0.05)])
def test_a_tokens_job_is_not_retried_once_the_token_is_revoked(
    tmp_path: Path, stop_post: float, stop_delay: float
) -> None:
    """Review of J: a token's retried job went on being retried after the token was revoked (or had expired). The
    attempt that runs when it is revoked runs to its end, as any job of a revoked token does; no other begins.
    With `stop_post`, the exit record comes while the unit still runs its ExecStopPost (seen on trixie): the job
    still ends saying why; with `stop_delay` too, a follower that reads that exit record while sjobd waits for
    systemd to stop the unit sees the job end saying why (review of H)."""

    async def body(w: World) -> None:
        w.units.stop_post = stop_post
        w.units.stop_delay = stop_delay
        policy = w.access.policy
        ci = dataclasses.replace(policy.rules[-1], name="ci", users=frozenset(), tokens=frozenset({"ci"}), run_as="ci")
        w.jobs.set_policy(dataclasses.replace(policy, rules=(ci, *policy.rules)), w.jobs.profiles)
        root = Principal(0, 0, 1, "root", frozenset({"root"}))
        token, _ = w.access.issue_token(root, "ci", None, None, time.time_ns() // 1000)
        bearer = w.access.authenticate(ALICE, token, time.time_ns() // 1000)
        gate = tmp_path / "gate"
        failing = JobSpec(["/bin/sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 3"], "/", retry=Retry(5))
        w.units.time_scale = 1.0  # a second between attempts, as systemd's least RestartSec= for sjob
        job = await w.jobs.start(bearer, failing)
        assert job.token_id is not None
        followed = asyncio.create_task(w.output(root, job.id))  # as `sjob logs -f` does
        w.access.revoke_token(root, job.token_id, time.time_ns() // 1000)
        gate.touch()  # attempt 1 ends (failed): systemd would start attempt 2 after the delay
        ended = await w.until(job.id, JobState.stopped)
        why = f"no attempt 2: token {job.token_id} was revoked by root"
        assert [a.number for a in ended.attempts or []] == [1]
        assert ended.message == why
        assert ended.stopped_by == "sjobd"
        _, _, seen = await asyncio.wait_for(followed, 10)
        assert (seen.state, seen.message) == (JobState.stopped, why)
        assert w.records.get(job.id) == ended  # finished once: nothing came after

    run(tmp_path, body)


def test_status_right_after_a_provisional_end_applies_the_exit_report(tmp_path: Path) -> None:
    """`sjob run` answers once the command exited and its output is in, before the unit's exit report (with what
    the job used) is read; `sjob status` just after applies that report if journald has it (seen in a loaded VM)."""
    from supervisor.protocol import Resources  # noqa: PLC0415
    from supervisor.units import Outcome  # noqa: PLC0415

    async def body(w: World) -> None:
        w.units.run_commands = False
        job = await w.jobs.start(ALICE, JobSpec(["/bin/true"], "/"))
        ended = w.jobs._ledger.finish(job, Outcome(JobState.failed, "exit-code", 3, None, None), time.time_ns() // 1000)
        assert ended.resources is None
        used = Resources(cpu_usec=1234)
        w.log.add(job.id, ExitRecord("exit-code", "exited", 3, when_usec=5, resources=used))
        assert (await w.jobs.status(ALICE, job.id)).resources == used

    run(tmp_path, body)
