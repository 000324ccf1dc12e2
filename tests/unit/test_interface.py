"""The io.sjob.Jobs interface as asyncvarlink derives it from JobsInterface: the description `varlinkctl
introspect` shows, and how each method is called. Both are the contract with clients, so a change to them must be
deliberate: update io.sjob.Jobs.varlink beside this file (the failure says how). And the decorator that answers an
SjobError with its Varlink error, which must leave all of that as it is."""

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import pytest
from asyncvarlink import LastResult, TypedVarlinkErrorReply
from asyncvarlink.interface import varlinksignature

from supervisor.errors import no_such_job
from supervisor.interface import JobsInterface, answers_sjob_errors
from supervisor.protocol import INTERFACE, Method

DESCRIPTION = Path(__file__).with_name("io.sjob.Jobs.varlink")
REGENERATE = (
    "if the interface is meant to change: .venv/bin/python -c 'import sys; from supervisor.interface import"
    f" JobsInterface; sys.stdout.write(JobsInterface.render_interface_description())' > {DESCRIPTION}"
)

# (asynchronous, more): asyncvarlink awaits a coroutine method and iterates an async generator's replies. A wrapper
# of the wrong kind still renders the same description, and would fail only when called.
CALLING = {
    "Authenticate": (False, False),
    "IssueToken": (False, False),
    "ListTokens": (False, False),
    "RevokeToken": (False, False),
    "List": (False, False),
    "Start": (True, False),
    "Status": (True, False),
    "Stop": (True, False),
    "Follow": (True, True),
    "FollowPipe": (True, True),
    "Schedule": (True, False),
    "ListTimers": (True, False),
    "RemoveTimer": (True, False),
    "Usage": (True, False),
}


def test_the_description_is_unchanged() -> None:
    assert JobsInterface.render_interface_description() == DESCRIPTION.read_text(), REGENERATE


def test_every_method_is_there_and_called_as_before() -> None:
    found = {}
    for name in dir(JobsInterface):
        if (signature := varlinksignature(getattr(JobsInterface, name))) is not None:
            found[name] = (signature.asynchronous, signature.more)
    assert found == CALLING
    assert {f"{JobsInterface.name}.{name}" for name in found} == set(Method)


def test_the_error_decorator_keeps_each_kind_of_method_and_its_signature() -> None:
    def plain(self: object, id: str, wait: bool = True) -> int:
        raise no_such_job(id)

    async def call(self: object, id: str, wait: bool = True) -> int:
        raise no_such_job(id)

    async def stream(self: object, id: str, wait: bool = True) -> AsyncIterator[int]:
        yield 1
        raise no_such_job(id)

    assert inspect.isfunction(answers_sjob_errors(plain))
    assert inspect.iscoroutinefunction(answers_sjob_errors(call))
    assert inspect.isasyncgenfunction(answers_sjob_errors(stream))
    for method in (plain, call, stream):
        wrapped = answers_sjob_errors(method)
        assert inspect.signature(wrapped) == inspect.signature(method)
        assert (wrapped.__name__, wrapped.__doc__) == (method.__name__, method.__doc__)

    def generator(self: object) -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError):
        answers_sjob_errors(generator)


def test_the_error_decorator_answers_sjob_errors_and_passes_all_else() -> None:
    closed: list[str] = []

    @answers_sjob_errors
    def plain(id: str) -> int:
        raise no_such_job(id)

    @answers_sjob_errors
    async def call(id: str) -> int:
        raise no_such_job(id)

    @answers_sjob_errors
    async def stream(id: str, end: BaseException) -> AsyncGenerator[int]:
        try:
            yield 1
            raise end
        finally:
            closed.append(id)

    async def replies(id: str, end: BaseException) -> list[int]:
        return [reply async for reply in stream(id, end)]

    def expect_no_such_job(error: TypedVarlinkErrorReply) -> None:
        missing = no_such_job("0badc0de")
        assert (error.name, error.parameters) == (
            f"{INTERFACE}.NoSuchJob",
            {"message": missing.message, "hint": missing.hint},
        )

    async def main() -> None:
        with pytest.raises(TypedVarlinkErrorReply) as e:
            plain("0badc0de")
        expect_no_such_job(e.value)
        with pytest.raises(TypedVarlinkErrorReply) as e:
            await call("0badc0de")
        expect_no_such_job(e.value)
        with pytest.raises(TypedVarlinkErrorReply) as e:
            await replies("0badc0de", no_such_job("0badc0de"))
        expect_no_such_job(e.value)
        # The last reply of a stream, and any other exception, pass as they are.
        with pytest.raises(LastResult):
            await replies("last", LastResult(2))
        with pytest.raises(RuntimeError):
            await replies("bug", RuntimeError("bug"))
        # Closing the stream early (a client gone) closes the method's own generator at once.
        early = stream("early", RuntimeError("never reached"))
        assert await anext(early) == 1
        await early.aclose()
        assert closed == ["0badc0de", "last", "bug", "early"]

    asyncio.run(main())


def test_the_functions_description_is_pinned_too() -> None:
    from supervisor.fninterface import FunctionsInterface  # noqa: PLC0415

    pinned = Path(__file__).with_name("io.sjob.Functions.varlink")
    regenerate = (
        ".venv/bin/python -c 'import sys; from supervisor.fninterface import FunctionsInterface;"
        f" sys.stdout.write(FunctionsInterface.render_interface_description())' > {pinned}"
    )
    assert FunctionsInterface.render_interface_description() == pinned.read_text(), regenerate
