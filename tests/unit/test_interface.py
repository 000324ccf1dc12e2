"""The io.sjob.Jobs interface as asyncvarlink derives it from JobsInterface: the description `varlinkctl
introspect` shows, and how each method is called. Both are the contract with clients, so a change to them must be
deliberate: update io.sjob.Jobs.varlink beside this file (the failure says how)."""

from pathlib import Path

from asyncvarlink.interface import varlinksignature

from supervisor.interface import JobsInterface
from supervisor.protocol import Method

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
