"""`@frozen`: frozen, slotted record classes that are dataclasses wherever anything looks, and cost nothing to define.

Why not `@dataclasses.dataclass(frozen=True, slots=True)`: that builds each class's methods from source with `exec`
when the module is imported, about half a millisecond per class natively (ten times that in the test VM), and imports
`dataclasses` and with it `inspect`, `ast`, `dis` and `tokenize`. The `sjob` CLI imports the protocol's classes on
every call and builds a few instances of them; building all of them made up a third of `sjob list`'s time (issue H).

What a `@frozen` class has, as `dataclass(frozen=True, slots=True)` would give it:
- `__slots__`, `__match_args__`, and a keyword-or-positional `__init__` with the class body's defaults (compiled the
  first time the class is instantiated, then as fast as the dataclass's own);
- `__eq__` and `__hash__` over the fields in order, a `__repr__` of the same form, and frozen `__setattr__` and
  `__delattr__` that raise dataclasses.FrozenInstanceError (also for the `__setstate__` of copy and pickle);
- `__dataclass_fields__`, built on first use from a dataclass of the same fields: so `dataclasses.fields`,
  `is_dataclass`, `replace` and `asdict` work, and asyncvarlink (which reads the fields to describe and convert the
  Varlink interface) sees a dataclass. Only sjobd gets there; the CLI never imports `dataclasses`.

It takes what these modules use and refuses the rest: no base classes, no `dataclasses.field()` (a default is a
plain value, and immutable, as dataclasses require), no ClassVar, no `__post_init__` (which would not run) nor a
method of its own in place of one it makes, no field named `self` or with a dunder name. mypy sees
`dataclass_transform`, so it checks constructors, frozenness and `dataclasses.replace` as for a dataclass.
tests/unit/test_frozen.py holds every class that uses it to the dataclass of the same declaration.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")

_FIELDS = "__frozen_fields__"  # the field names, in order
_DEFAULTS = "__frozen_defaults__"  # name -> default, for the fields that have one
# What a dataclass would call or define that this does not: refused, never silently skipped (a __post_init__ that
# validates would not run).
_NOT_SUPPORTED = ("__post_init__", "__init__", "__eq__", "__hash__", "__setattr__", "__delattr__", "__replace__")


def names(cls: type) -> tuple[str, ...]:
    """The fields of a `@frozen` class, in order."""
    found: tuple[str, ...] = getattr(cls, _FIELDS)
    return found


def defaults(cls: type) -> dict[str, object]:
    """The defaults of a `@frozen` class's fields that have one."""
    found: dict[str, object] = getattr(cls, _DEFAULTS)
    return found


def is_frozen(cls: object) -> bool:
    return isinstance(cls, type) and _FIELDS in cls.__dict__


if TYPE_CHECKING:

    @dataclass_transform(frozen_default=True)
    def frozen(cls: type[_T]) -> type[_T]: ...

else:

    def frozen(cls):
        body = dict(cls.__dict__)
        if cls.__bases__ != (object,):
            raise TypeError(f"@frozen class {cls.__name__} has base classes; they are not supported")
        # The class's own annotations (from Python 3.14 they are computed on first access, not in its __dict__).
        declared = dict(cls.__annotations__)
        for method in _NOT_SUPPORTED:
            if method in body:
                raise TypeError(f"@frozen class {cls.__name__}: {method} is not supported")
        fields = tuple(declared)
        found_defaults: dict[str, object] = {}
        for name in fields:
            if not name.isidentifier() or name.startswith("__") or name == "self":
                raise TypeError(f"@frozen class {cls.__name__}: {name!r} cannot be a field's name")
            annotation = declared[name]
            if "ClassVar" in (annotation if isinstance(annotation, str) else repr(annotation)):
                raise TypeError(f"@frozen class {cls.__name__}: ClassVar {name!r} is not supported")
            if name in body:
                default = body.pop(name)
                if type(default).__hash__ is None or type(default).__name__ in ("Field", "property"):
                    raise ValueError(
                        f"@frozen class {cls.__name__}: the default of {name!r} must be a plain immutable value"
                    )
                found_defaults[name] = default
            elif found_defaults:
                raise TypeError(f"@frozen class {cls.__name__}: non-default field {name!r} follows a default one")
        for name in ("__dict__", "__weakref__", "__annotate__"):
            body.pop(name, None)
        body.update(
            {
                "__qualname__": cls.__qualname__,
                "__annotations__": declared,
                "__slots__": fields,
                "__match_args__": fields,
                _FIELDS: fields,
                _DEFAULTS: found_defaults,
                "__init__": _first_init,
                "__repr__": _repr,
                "__eq__": _eq,
                "__hash__": _hash,
                "__setattr__": _setattr,
                "__delattr__": _delattr,
                "__getstate__": _getstate,
                "__setstate__": _setstate,
                "__replace__": _replace,  # copy.replace (Python 3.13)
                "__dataclass_fields__": _DataclassFields(),
            }
        )
        return type(cls)(cls.__name__, cls.__bases__, body)


def _values(self: Any) -> tuple[object, ...]:
    return tuple([getattr(self, name) for name in getattr(self, _FIELDS)])


def _first_init(self: Any, *args: object, **kwargs: object) -> None:
    """The first instance of its class: compile the class's own `__init__`, which then takes over."""
    cls = type(self)
    init = _compile_init(cls)
    type.__setattr__(cls, "__init__", init)
    init(self, *args, **kwargs)


def _compile_init(cls: type) -> Any:
    fields, found_defaults = names(cls), defaults(cls)
    # Only identifiers reach the source (`frozen` checked the names), and defaults go by name.
    # Its own names are dunders, which no field's name is (`frozen` refused them), nor `self`.
    parameters = ", ".join(f"{name}=__defaults[{name!r}]" if name in found_defaults else name for name in fields)
    lines = [f"def __init__(self, {parameters}):" if fields else "def __init__(self):"]
    lines += [f"    __set(self, {name!r}, {name})" for name in fields] or ["    pass"]
    namespace: dict[str, Any] = {"__defaults": found_defaults, "__set": object.__setattr__}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built above from identifiers only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in getattr(self, _FIELDS))
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> object:
    if other.__class__ is self.__class__:
        same: bool = _values(self) == _values(other)
        return same
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_error(what: str) -> Exception:
    import dataclasses  # noqa: PLC0415 - only a bug gets here: the CLI must not pay for this import

    return dataclasses.FrozenInstanceError(what)


def _setattr(self: Any, name: str, value: object) -> None:
    raise _frozen_error(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise _frozen_error(f"cannot delete field {name!r}")


def _replace(self: Any, **changes: object) -> Any:
    return type(self)(**{name: getattr(self, name) for name in getattr(self, _FIELDS)} | changes)


def _getstate(self: Any) -> list[object]:
    return list(_values(self))


def _setstate(self: Any, state: list[object]) -> None:
    for name, value in zip(getattr(self, _FIELDS), state, strict=True):
        object.__setattr__(self, name, value)


class _DataclassFields:
    """The class's `__dataclass_fields__`, made the first time something asks, from a dataclass of the same fields
    and defaults; then stored on the class in this descriptor's place."""

    def __get__(self, instance: object, owner: type) -> dict[str, Any]:
        import dataclasses  # noqa: PLC0415 - sjobd (asyncvarlink) and dataclasses.replace get here; the CLI does not

        shadow: Any = dataclasses.dataclass(frozen=True)(
            type(
                owner.__name__,
                (),
                {
                    "__annotations__": dict(owner.__annotations__),
                    "__module__": owner.__module__,
                    "__qualname__": owner.__qualname__,
                    **defaults(owner),
                },
            )
        )
        made: dict[str, Any] = shadow.__dataclass_fields__
        type.__setattr__(owner, "__dataclass_fields__", made)
        type.__setattr__(owner, "__dataclass_params__", shadow.__dataclass_params__)
        return made
