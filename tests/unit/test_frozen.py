"""`@frozen` classes behave as the frozen, slotted dataclass of the same declaration: every class that uses it, held
to that dataclass for construction, defaults, equality, hashing, repr, frozenness, copying and the dataclasses API."""

import copy
import dataclasses
import importlib
import pickle
import pkgutil
import subprocess
import sys
from typing import Any

import pytest

import supervisor
import supervisor.cli
from supervisor import frozen
from supervisor.frozen import frozen as frozen_class


def frozen_classes() -> list[type]:
    found: dict[str, type] = {}
    for package in (supervisor, supervisor.cli):
        for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if frozen.is_frozen(value) and value.__module__ == info.name:
                    found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


CLASSES = frozen_classes()


def twin(cls: type) -> Any:
    """The dataclass the same declaration makes."""
    body = {"__annotations__": dict(cls.__annotations__), "__module__": cls.__module__, **frozen.defaults(cls)}
    made = type(cls.__name__, (), {**body, "__qualname__": cls.__qualname__})
    made_twin: Any = dataclasses.dataclass(frozen=True, slots=True)(made)
    return made_twin


def is_dataclass(value: object) -> bool:
    """dataclasses.is_dataclass, without narrowing the type of what it is given."""
    return dataclasses.is_dataclass(value)


def values(cls: type, salt: str = "") -> list[str]:
    return [f"{name}{salt}" for name in frozen.names(cls)]


def test_the_protocols_and_the_clis_classes_are_all_here() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"Job", "JobSpec", "Limits", "Timer", "TokenInfo", "Function", "Option", "Command", "Limit"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_a_frozen_class_behaves_as_its_dataclass_twin(cls: Any) -> None:
    other = twin(cls)
    assert is_dataclass(cls)
    assert [(f.name, f.type, f.default) for f in dataclasses.fields(cls)] == [
        (f.name, f.type, f.default) for f in dataclasses.fields(other)
    ]
    assert cls.__match_args__ == other.__match_args__
    required = [f.name for f in dataclasses.fields(other) if f.default is dataclasses.MISSING]
    # Positional, by keyword, and with the defaults: the same fields, the same repr, equality and hash.
    given = values(cls)
    ours, theirs = cls(*given), other(*given)
    assert repr(ours) == repr(theirs)
    assert hash(ours) == hash(theirs)
    assert ours == cls(**dict(zip(frozen.names(cls), given, strict=True)))
    assert ours != cls(*values(cls, "'"))
    assert ours != theirs  # not the same class: as two dataclasses, never equal
    minimal = {name: name for name in required}
    assert repr(cls(**minimal)) == repr(other(**minimal))
    # What a dataclass refuses, refused the same way.
    if required:
        with pytest.raises(TypeError):
            cls()
    with pytest.raises(TypeError):
        cls(*given, "one too many")
    with pytest.raises(TypeError):
        cls(**minimal, no_such_field=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.__setattr__(given[0] if given else "x", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.__delattr__(given[0] if given else "x")
    assert not hasattr(ours, "__dict__")  # slotted
    # The dataclasses API, copies and pickles.
    if given:
        first = frozen.names(cls)[0]
        changed = dataclasses.replace(ours, **{first: "changed"})
        assert getattr(changed, first) == "changed"
        assert dataclasses.replace(changed, **{first: given[0]}) == ours
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)
    assert copy.copy(ours) == ours
    assert copy.deepcopy(ours) == ours
    assert pickle.loads(pickle.dumps(ours)) == ours  # noqa: S301 - its own bytes


def test_frozen_refuses_what_it_does_not_do() -> None:
    class Base:
        pass

    class Derived(Base):
        x: int

    with pytest.raises(TypeError, match="base classes"):
        frozen_class(Derived)

    class Mutable:
        x: list[int] = []

    with pytest.raises(ValueError, match="plain immutable"):
        frozen_class(Mutable)

    class WithField:
        x: int = dataclasses.field(default=1)

    with pytest.raises(ValueError, match="plain immutable"):
        frozen_class(WithField)

    class Order:
        x: int = 1
        y: int

    with pytest.raises(TypeError, match="non-default"):
        frozen_class(Order)

    class Validated:
        x: int

        def __post_init__(self) -> None:
            raise ValueError  # would never run

    with pytest.raises(TypeError, match="__post_init__ is not supported"):
        frozen_class(Validated)
    for name in ("self", "__set", "__defaults"):
        with pytest.raises(TypeError, match="cannot be a field's name"):
            frozen_class(type("Named", (), {"__annotations__": {name: int}}))


def test_copy_replace_as_for_a_dataclass() -> None:
    """copy.replace (Python 3.13) calls __replace__, which dataclasses define."""

    @frozen_class
    class Point:
        x: int
        y: int = 0

    point: Any = Point(1, 2)  # mypy knows __replace__ only on Python 3.13
    assert point.__replace__(y=3) == Point(1, 3)
    with pytest.raises(TypeError):
        point.__replace__(z=1)


def test_defining_the_protocol_imports_no_dataclasses() -> None:
    """The point of `frozen`: the CLI builds replies without importing dataclasses (and inspect)."""
    code = (
        "import sys\n"
        "from supervisor.protocol import Job, JobState, from_wire, to_wire\n"
        "job = from_wire(Job, {'id': '1a2b3c4d', 'unit': 'sjob-1a2b3c4d.service', 'state': 'exited', 'uid': 1000,\n"
        "    'user': 'alice', 'argv': ['true'], 'cwd': '/', 'created_usec': 1, 'attempts': []})\n"
        "assert job.state is JobState.exited and to_wire(job)['state'] == 'exited'\n"
        "print(sorted({'dataclasses', 'inspect'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
