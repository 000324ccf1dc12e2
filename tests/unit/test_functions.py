"""Functions (issue G) with fakes behind the Protocols: deploy builds and commits versions (and a failed build
changes nothing), calls run the version's compiled code with the caller's stdin, who may call what, rollback,
removal, the concurrency cap and its queue, the calls' history. The fake units run each unit's command locally,
its bind mounts rewritten to their sources (tests/unit/fakes.py); the real sandbox is the VM suite's."""

import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError
from supervisor.fnclient import FunctionClient
from supervisor.fnprotocol import FunctionSettings
from supervisor.fnstore import FunctionStore
from supervisor.functions import FunctionService
from supervisor.jobs import JobService
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger
from supervisor.policy import Action, FunctionsPolicy
from supervisor.properties import ShimCommand
from supervisor.protocol import Chunk, Input, Job, JobState, Limits
from supervisor.queue import JobQueue
from supervisor.reaper import Reaper
from supervisor.records import JobRecords

from .fakes import FakeAudit, FakeJobLog, FakeUnits, shipped_access
from .serverthread import ServerThread

T = TypeVar("T")
DEPLOYER = Principal(1000, 1000, 10, "alice", frozenset({"alice", "sjob-fn"}))
CALLER = Principal(1001, 1001, 11, "bob", frozenset({"bob", "analysts"}))
OTHER = Principal(1002, 1002, 12, "carol", frozenset({"carol"}))
HELLO = 'name = input("What\'s your name: ")\nprint("Hello", name)\n'


@dataclasses.dataclass
class World:
    functions: FunctionService
    jobs: JobService
    units: FakeUnits
    records: JobRecords
    store: FunctionStore
    audit: FakeAudit


def scenario(body: Callable[[World], Awaitable[T]], tmp_path: Path, **functions: object) -> T:
    async def main() -> T:
        log = FakeJobLog()
        units = FakeUnits(log)
        records = JobRecords(tmp_path / "jobs.sqlite")
        audit = FakeAudit()
        access, profiles = shipped_access(audit)
        # This test's own Python stands for the runtime (it has no pandas, and needs none here).
        access.policy = dataclasses.replace(
            access.policy,
            functions=FunctionsPolicy(runtime=sys.prefix, **functions),  # type: ignore[arg-type]
        )
        ledger = Ledger(records, log)
        reaper = Reaper(units, log, records, ledger, lambda: access.policy.retention)
        shim = ShimCommand("/opt/sjob/bin/sjob-shim")
        launcher = Launcher(units, records, ledger, reaper, lambda: access.policy, shim)
        queue = JobQueue(records, ledger, launcher, access)
        jobs = JobService(units, log, records, ledger, reaper, launcher, access, profiles, queue)
        store = FunctionStore(tmp_path / "state")
        service = FunctionService(store, units, log, records, ledger, launcher, shim, access, lambda: profiles)
        watcher = asyncio.create_task(reaper.watch_exits())
        try:
            return await asyncio.wait_for(body(World(service, jobs, units, records, store, audit)), 60)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await service.close()
            await reaper.close()
            await units.close()
            store.close()
            records.close()

    return asyncio.run(main())


async def output(world: World, principal: Principal, job: Job) -> tuple[bytes, bytes, Job]:
    out = err = b""
    final = None
    async for item in world.jobs.follow(principal, job.id):
        if isinstance(item, Chunk):
            if item.stream.value == "stdout":
                out += item.data
            else:
                err += item.data
        elif isinstance(item, Job):
            final = item
    assert final is not None
    return out, err, final


def piped(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


async def call(world: World, principal: Principal, ref: str, data: bytes = b"", args: tuple[str, ...] = ()) -> Job:
    fd = piped(data)
    try:
        return await world.functions.call(principal, ref, list(args), fd, Input.pipe)
    finally:
        os.close(fd)


def test_deploy_then_call_with_stdin_in_and_output_out(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        deployed = await world.functions.deploy(
            DEPLOYER, "hello", HELLO, None, FunctionSettings(allow=["bob"], description="greets")
        )
        assert (deployed.function.version, deployed.version.version, deployed.function.owner) == (1, 1, "alice")
        version_dir = world.store.version_dir("hello", 1)
        assert (version_dir / "main.py").read_text() == HELLO
        assert list((version_dir / "__pycache__").glob("main.*.pyc")), "the build compiled the code"
        assert (version_dir / "main.py").stat().st_mode & 0o777 == 0o644
        job = await call(world, CALLER, "hello", b"Ada\n")
        assert (job.function, job.version, job.user, job.dynamic) == ("hello", 1, "bob", True)
        unit = world.units.started[-1]
        assert unit.get("DynamicUser") is True
        assert "User" not in dict(unit.properties)
        assert unit.get("Slice") == "sjob-u1001.slice"  # charged to the caller
        assert "SJOB_CALLER=bob" in unit.get("Environment")  # type: ignore[operator]
        out, _, final = await output(world, CALLER, job)
        assert out == b"What's your name: Hello Ada\n"
        assert final.state is JobState.exited
        (history,) = world.functions.calls(DEPLOYER, "hello")
        assert (history.caller, history.version, history.state) == ("bob", 1, "exited")
        record = world.records.get(job.id)
        assert record is not None
        assert (record.bytes_in, record.bytes_out) == (4, len(out))

    scenario(body, tmp_path)


def test_code_that_does_not_compile_changes_nothing(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        with pytest.raises(SjobError) as new:
            await world.functions.deploy(DEPLOYER, "broken", "def f(:\n", None, FunctionSettings())
        assert new.value.code is ErrorCode.BuildFailed
        assert "does not compile" in new.value.message
        assert "line 1" in new.value.message
        assert world.store.get("broken") is None
        assert not list((world.store.root / "broken").iterdir())  # the staging went too
        await world.functions.deploy(DEPLOYER, "good", "print(1)\n", None, FunctionSettings())
        with pytest.raises(SjobError):
            await world.functions.deploy(DEPLOYER, "good", "print(\n", None, FunctionSettings())
        assert world.store.get("good").version == 1  # type: ignore[union-attr]
        assert [v.version for v in world.functions.versions(DEPLOYER, "good")] == [1]

    scenario(body, tmp_path)


def test_who_may_call_and_manage(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        await world.functions.deploy(DEPLOYER, "mine", "print('only me')\n", None, FunctionSettings())
        # Not allowed: exactly like a function that does not exist.
        messages = []
        for name in ("mine", "nothere"):
            with pytest.raises(SjobError) as refused:
                await call(world, CALLER, name)
            assert refused.value.code is ErrorCode.NoSuchFunction
            messages.append(refused.value.message.replace(name, "NAME"))
        assert messages[0] == messages[1]
        with pytest.raises(SjobError) as hidden:
            world.functions.show(CALLER, "mine")
        assert hidden.value.message == "no function named 'mine'"
        assert world.functions.list_functions(CALLER) == []
        # Callers by group; deploying needs the deploy action (the shipped policy: group sjob-fn) and ownership.
        await world.functions.deploy(DEPLOYER, "mine", "print('group')\n", None, FunctionSettings(allow=["@analysts"]))
        assert [f.name for f in world.functions.list_functions(CALLER)] == ["mine"]
        assert (await output(world, CALLER, await call(world, CALLER, "mine")))[0] == b"group\n"
        with pytest.raises(SjobError) as not_deployer:
            await world.functions.deploy(CALLER, "theirs", "print(1)\n", None, FunctionSettings())
        assert not_deployer.value.code is ErrorCode.PermissionDenied
        other_deployer = dataclasses.replace(OTHER, groups=frozenset({"carol", "sjob-fn"}))
        with pytest.raises(SjobError) as not_owner:
            await world.functions.deploy(other_deployer, "mine", "print(2)\n", None, FunctionSettings())
        assert "alice's" in not_owner.value.message
        calls = [e for e in world.audit.entries if e.action == "call"]
        assert any(e.function == "mine" and not e.allowed for e in calls)
        assert any(e.function == "mine" and e.allowed and e.version == 2 for e in calls)

    scenario(body, tmp_path)


def test_rollback_serves_the_older_version_to_the_next_call(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        settings = FunctionSettings(allow=["*"])
        await world.functions.deploy(DEPLOYER, "v", "print('one')\n", None, settings)
        await world.functions.deploy(DEPLOYER, "v", "print('two')\n", None, FunctionSettings())
        assert (await output(world, CALLER, await call(world, CALLER, "v")))[0] == b"two\n"
        assert world.functions.rollback(DEPLOYER, "v", 1).version == 1
        assert (await output(world, CALLER, await call(world, CALLER, "v")))[0] == b"one\n"
        assert (await output(world, CALLER, await call(world, CALLER, "v@2")))[0] == b"two\n"
        with pytest.raises(SjobError):
            world.functions.rollback(CALLER, "v", 2)  # only its owner
        with pytest.raises(SjobError):
            world.functions.rollback(DEPLOYER, "v", 9)

    scenario(body, tmp_path)


def test_the_concurrency_cap_queues_then_refuses_as_busy(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        gate = "import sys, time\nwhile sys.stdin.read(1) != 'x': pass\n"  # runs until told "x" on its stdin
        await world.functions.deploy(DEPLOYER, "slow", gate, None, FunctionSettings(allow=["*"], concurrency=1))
        r, w = os.pipe()
        first = await world.functions.call(CALLER, "slow", [], r, Input.pipe)
        os.close(r)
        # The second waits in the queue (one place); the third finds it full and is busy at once.
        second = asyncio.create_task(call(world, CALLER, "slow", b"x"))
        await asyncio.sleep(0.3)
        assert not second.done()
        with pytest.raises(SjobError) as busy:
            await call(world, OTHER, "slow")
        assert busy.value.code is ErrorCode.Busy
        os.write(w, b"x")
        os.close(w)
        await output(world, CALLER, first)
        assert (await output(world, CALLER, await second))[2].state is JobState.exited

    scenario(body, tmp_path, concurrency=4, queue=1, queue_wait_usec=20_000_000)


def test_a_call_waits_no_longer_than_the_queue_allows(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        await world.functions.deploy(
            DEPLOYER, "hold", "import sys\nsys.stdin.read()\n", None, FunctionSettings(allow=["*"], concurrency=1)
        )
        r, w = os.pipe()
        held = await world.functions.call(CALLER, "hold", [], r, Input.pipe)
        os.close(r)
        with pytest.raises(SjobError) as busy:
            await call(world, CALLER, "hold")
        assert busy.value.code is ErrorCode.Busy
        os.close(w)
        await output(world, CALLER, held)

    scenario(body, tmp_path, queue=4, queue_wait_usec=300_000)


def test_remove_is_refused_while_calls_run_unless_forced(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        await world.functions.deploy(DEPLOYER, "gone", "import time\ntime.sleep(30)\n", None, FunctionSettings())
        job = await call(world, DEPLOYER, "gone")
        with pytest.raises(SjobError) as running:
            await world.functions.remove(DEPLOYER, "gone")
        assert running.value.code is ErrorCode.Busy
        assert world.store.get("gone") is not None
        await world.functions.remove(DEPLOYER, "gone", force=True)
        assert world.store.get("gone") is None
        assert not (world.store.root / "gone").exists()
        assert world.units.stopped == [job.unit]

    scenario(body, tmp_path)


def test_limits_above_the_deployers_ceilings_are_refused(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        with pytest.raises(SjobError) as above:
            await world.functions.deploy(
                DEPLOYER, "big", "print(1)\n", None, FunctionSettings(limits=Limits(memory_max=1 << 50))
            )
        assert above.value.code is ErrorCode.PermissionDenied or above.value.code is ErrorCode.InvalidArgument
        assert world.store.get("big") is None
        deployed = await world.functions.deploy(
            DEPLOYER, "small", "print(1)\n", None, FunctionSettings(limits=Limits(memory_max=256 << 20))
        )
        assert deployed.function.limits == Limits(memory_max=256 << 20)
        await output(world, DEPLOYER, await call(world, DEPLOYER, "small"))
        assert world.units.started[-1].get("MemoryMax") == 256 << 20

    scenario(body, tmp_path)


def test_a_second_deployer_waiting_behind_a_first_deploy_cannot_take_the_function(tmp_path: Path) -> None:
    """Review of G: both deploys of a new name passed the owner check before the first was committed; the second
    then became the current version of the first deployer's function."""

    async def body(world: World) -> None:
        mallory = dataclasses.replace(OTHER, groups=frozenset({"carol", "sjob-fn"}))
        first = asyncio.create_task(
            world.functions.deploy(DEPLOYER, "report", "print('alice')\n", None, FunctionSettings())
        )
        await asyncio.sleep(0)  # the first deploy holds the name's lock, building
        second = asyncio.create_task(
            world.functions.deploy(mallory, "report", "print('mallory')\n", None, FunctionSettings(allow=["*"]))
        )
        await first
        with pytest.raises(SjobError) as refused:
            await second
        assert "alice's" in refused.value.message
        function = world.store.get("report")
        assert function is not None
        assert (function.version, function.allow) == (1, [])

    scenario(body, tmp_path)


def test_one_caller_cannot_keep_a_function_from_others(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        code = "import sys\nsys.stdin.read()\n"
        await world.functions.deploy(DEPLOYER, "shared", code, None, FunctionSettings(allow=["*"], concurrency=2))
        held = []
        for _ in range(2):  # nobody else waits: the caller may take every slot
            r, w = os.pipe()
            held.append((await world.functions.call(CALLER, "shared", [], r, Input.pipe), w))
            os.close(r)
        other = asyncio.create_task(call(world, OTHER, "shared"))
        await asyncio.sleep(0.2)
        assert not other.done()  # waiting for a slot
        again = asyncio.create_task(call(world, CALLER, "shared"))
        await asyncio.sleep(0.2)
        with pytest.raises(SjobError) as busy:
            await call(world, CALLER, "shared")  # one place in the queue per caller
        assert busy.value.code is ErrorCode.Busy
        os.close(held[0][1])  # one of the caller's calls ends: the slot goes to the other caller, not to it
        assert (await other).user == "carol"
        assert not again.done()
        os.close(held[1][1])
        assert (await again).user == "bob"

    scenario(body, tmp_path, queue=4, queue_wait_usec=20_000_000)


def test_every_call_has_a_timeout(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        await world.functions.deploy(DEPLOYER, "quick", "print(1)\n", None, FunctionSettings())
        await output(world, DEPLOYER, await call(world, DEPLOYER, "quick"))
        assert world.units.started[-1].get("RuntimeMaxUSec") == 7_000_000  # the policy's, as it set none

    scenario(body, tmp_path, timeout_usec=7_000_000)


def test_a_new_function_of_an_old_name_has_no_history(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        await world.functions.deploy(DEPLOYER, "reused", "print(1)\n", None, FunctionSettings(allow=["*"]))
        await output(world, CALLER, await call(world, CALLER, "reused"))
        await world.functions.remove(DEPLOYER, "reused")
        other_deployer = dataclasses.replace(OTHER, groups=frozenset({"carol", "sjob-fn"}))
        await asyncio.sleep(0.01)
        await world.functions.deploy(other_deployer, "reused", "print(2)\n", None, FunctionSettings())
        assert world.functions.calls(other_deployer, "reused") == []

    scenario(body, tmp_path)


def test_every_method_over_a_real_socket(tmp_path: Path) -> None:
    """io.sjob.Functions through the real server and client: what asyncvarlink sends must match the types (a
    version's `requirements` came back from SQLite as 0 and was refused as an internal error)."""
    public = Path(tempfile.mkdtemp(prefix="sjob-test-"))
    public.chmod(0o755)
    server = ServerThread(public)
    policy = server.access.policy  # this test runs as root, whom the shipped policy does not let deploy
    everyone = dataclasses.replace(policy.rules[-1], actions=policy.rules[-1].actions | {Action.deploy})
    server.access.policy = dataclasses.replace(policy, rules=(everyone,))
    try:
        with FunctionClient(server.socket) as client:
            deployed = client.deploy(
                "echo", "import sys\nprint(sys.stdin.read().upper(), end='')\n", None, FunctionSettings()
            )
            assert deployed.version.requirements is False
            assert [v.version for v in client.versions("echo")] == [1]
            assert [f.name for f in client.functions()] == ["echo"]
            assert client.function("echo").owner == deployed.function.owner
            r, w = os.pipe()
            os.write(w, b"shout\n")
            os.close(w)
            job = client.call_function("echo", [], stdin=r)
            os.close(r)
            out = b"".join(item.data for item in client.follow(job.id) if isinstance(item, Chunk))
            assert out == b"SHOUT\n"
            assert [c.job for c in client.function_calls("echo")] == [job.id]
            assert client.rollback("echo", 1).version == 1
            client.remove_function("echo")
            with pytest.raises(SjobError) as gone:
                client.function("echo")
            assert gone.value.code is ErrorCode.NoSuchFunction
    finally:
        server.stop()
        shutil.rmtree(public)
