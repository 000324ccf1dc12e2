"""Resource limits: the policy's defaults and ceilings, a request checked against them, and the unit properties
that enforce the result. Pure: no I/O (device nodes are checked by the daemon, which may stat them).

A request can only tighten: a value above the ceiling is refused with an error that names the option, the value
and the ceiling (never silently clamped, so a job never runs with limits other than the ones shown). An unset
value takes the default, and a default above the ceiling is a policy error found at load time.
"""

from __future__ import annotations

import dataclasses
import re

from supervisor.errors import ErrorCode, SjobError, invalid_argument
from supervisor.limitforms import BY_FIELD, TABLE, unit_value
from supervisor.protocol import MAX_CPUS, Limits
from supervisor.quantities import format_cpu_list

MAX_DEVICE_LIMITS = 16
_DEVICE = re.compile(r"/dev/[A-Za-z0-9._/+-]{1,200}")

_SCALARS = tuple(limit.field for limit in TABLE if not limit.per_device and limit.kind != "cpus")  # timeout too
_DEVICE_FIELDS = tuple(limit.field for limit in TABLE if limit.per_device)


@dataclasses.dataclass(frozen=True, slots=True)
class LimitPolicy:
    default: Limits = dataclasses.field(default_factory=Limits)
    maximum: Limits = dataclasses.field(default_factory=Limits)  # an unset field has no ceiling
    per_user: Limits = dataclasses.field(default_factory=Limits)  # a user's jobs together: cpu, memory, tasks


def check(requested: Limits | None, policy: LimitPolicy) -> Limits:
    """The limits a job runs with: the request, completed by the defaults (or, lacking one, the ceiling); refused
    where above the ceilings."""
    requested = requested or Limits()
    _check_ranges(requested)
    merged = {
        f.name: value if (value := getattr(requested, f.name)) is not None else getattr(policy.default, f.name)
        for f in dataclasses.fields(Limits)
    }
    for name in _SCALARS:
        value, ceiling = merged[name], getattr(policy.maximum, name)
        if ceiling is None:
            continue
        if value is None:
            merged[name] = ceiling  # neither asked for nor defaulted: the most allowed
        elif value > ceiling:
            raise SjobError(
                ErrorCode.PermissionDenied,
                f"{BY_FIELD[name].option} {_show(name, value)} is above what policy allows you"
                f" ({_show(name, ceiling)})",
                hint=f"ask for at most {_show(name, ceiling)}, or ask an administrator to raise the ceiling",
            )
    cpus, allowed = merged["allowed_cpus"], policy.maximum.allowed_cpus
    if allowed is not None:
        if cpus is None:
            merged["allowed_cpus"] = allowed
        elif not set(cpus) <= set(allowed):
            raise SjobError(
                ErrorCode.PermissionDenied,
                f"--allowed-cpus {format_cpu_list(cpus)} includes CPUs policy does not allow you"
                f" ({format_cpu_list(sorted(set(cpus) - set(allowed)))})",
                hint=f"choose among CPUs {format_cpu_list(allowed)}, or ask an administrator",
            )
    return Limits(**merged)


def _check_ranges(limits: Limits) -> None:
    """What a client could send that no CLI would: values out of the kernel's or systemd's range."""
    for name in _SCALARS:
        value, limit = getattr(limits, name), BY_FIELD[name]
        if value is not None and not limit.low <= value <= limit.high:
            raise invalid_argument(f"{limit.option} {value}: out of range", hint=f"give {limit.low} to {limit.high}")
    if limits.allowed_cpus is not None and (
        not 0 < len(limits.allowed_cpus) <= MAX_CPUS or not all(0 <= c < MAX_CPUS for c in limits.allowed_cpus)
    ):
        raise invalid_argument("--allowed-cpus: out of range", hint=f"give CPU numbers from 0 to {MAX_CPUS - 1}")
    for name in _DEVICE_FIELDS:
        entries, limit = getattr(limits, name) or [], BY_FIELD[name]
        if len(entries) > MAX_DEVICE_LIMITS:
            raise invalid_argument(f"{limit.option}: at most {MAX_DEVICE_LIMITS} devices")
        for entry in entries:
            if not _DEVICE.fullmatch(entry.device) or "/../" in entry.device + "/":
                raise invalid_argument(
                    f"{limit.option} {entry.device[:60]!r}: not a device node path",
                    hint="give a block device such as /dev/vda, or a path on it such as /",
                )
            if not limit.low <= entry.rate <= limit.high:
                raise invalid_argument(f"{limit.option} {entry.device}={entry.rate}: out of range")


def devices(limits: Limits) -> list[str]:
    """Every device node the limits name (the daemon checks each is a block device)."""
    return sorted({e.device for name in _DEVICE_FIELDS for e in getattr(limits, name) or []})


def unit_properties(limits: Limits) -> list[tuple[str, object]]:
    """systemd properties enforcing `limits`."""
    return [
        (limit.prop, unit_value(limit, value)) for limit in TABLE if (value := getattr(limits, limit.field)) is not None
    ]


def _show(name: str, value: int) -> str:
    if name == "cpu_percent":
        return f"{value}%"
    if name.startswith("memory"):
        for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
            if value % size == 0:
                return f"{value // size}{unit}"
        return str(value)
    if name == "timeout_usec":
        return f"{value / 1e6:g}s"
    return str(value)
