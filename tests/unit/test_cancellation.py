"""sjobd's waits never swallow a cancellation: Python 3.11's asyncio.wait_for returns normally when it is cancelled
in the same turn of the loop as what it waits for completes, and sjobd hung on shutdown in the bookworm VM (its own
"shutting down" log line woke the exit watcher just as it was cancelled)."""

import asyncio
import contextlib
import sys

import pytest

from supervisor.daemon import _cancelled, _until_stopped
from supervisor.journal import _changed_within


async def _cancel_as_it_is_set(wait: object) -> asyncio.Task[None]:
    changed = asyncio.Event()

    async def watcher() -> None:
        while True:  # as the exit watcher: wait for a change, read, wait again
            await wait(changed)  # type: ignore[operator]
            changed.clear()

    task = asyncio.create_task(watcher())
    await asyncio.sleep(0.01)
    changed.set()
    task.cancel()
    await asyncio.sleep(0.05)
    return task


def test_a_wait_for_a_change_cancelled_as_the_change_comes_is_cancelled() -> None:
    async def body() -> None:
        task = await _cancel_as_it_is_set(lambda changed: _changed_within(changed, 5.0))
        assert task.cancelled()

    asyncio.run(body())


def test_shutdown_cancels_again_a_task_that_swallowed_its_cancellation() -> None:
    async def body() -> None:
        swallowed = 0

        async def stubborn() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    swallowed += 1
                    if swallowed > 1:
                        raise

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0.01)
        await asyncio.wait_for(_cancelled(task), 10)
        assert task.cancelled()
        assert swallowed == 2

    asyncio.run(body())


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 fixed asyncio.wait_for")
def test_python_3_11_wait_for_does_swallow_it() -> None:
    """What the two tests above guard against, shown: this is why sjobd does not use wait_for in its loops."""

    async def body() -> None:
        async def wait_for(changed: asyncio.Event) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 5.0)

        task = await _cancel_as_it_is_set(wait_for)
        assert not task.done()  # the cancellation was lost: it waits on
        task.cancel()
        await asyncio.sleep(0.01)

    asyncio.run(body())


def test_sjobd_stops_with_a_failure_when_a_task_that_runs_for_as_long_as_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exit watcher, the pruner and the timers' run watcher run for as long as sjobd serves. The pruner once
    died of a database error and sjobd went on without it, unnoticed: now any of them ending stops sjobd, with a
    failure, so that systemd starts it again; as a lost bus does. Asked to stop, it stops without one."""

    async def body() -> tuple[bool, bool, bool]:
        async def forever() -> None:
            await asyncio.Event().wait()

        async def broken() -> None:
            raise RuntimeError("database disk image is malformed")

        never_lost = asyncio.Event()
        tasks = [asyncio.create_task(forever(), name="watch-exits"), asyncio.create_task(broken(), name="prune")]
        one_ended = await asyncio.wait_for(_until_stopped(tasks, never_lost.wait(), asyncio.Event()), 10)
        lost = asyncio.Event()
        lost.set()
        tasks = [*tasks[:1], asyncio.create_task(forever(), name="prune")]
        bus_lost = await _until_stopped(tasks, lost.wait(), asyncio.Event())
        stop = asyncio.Event()
        stop.set()
        asked = await _until_stopped(tasks, never_lost.wait(), stop)
        await _cancelled(*tasks)
        return one_ended, bus_lost, asked

    assert asyncio.run(body()) == (True, True, False)
    assert "prune ended: RuntimeError('database disk image is malformed'); stopping" in caplog.messages
    assert "lost the connection to the system bus; stopping" in caplog.messages
