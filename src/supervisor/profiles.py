"""Sandbox profiles: named sets of unit properties, read from TOML files (policy/profiles/*.toml, shipped; an
admin's file of the same name in /etc/sjob/profiles wins).

A profile may set only the properties in `_CONVERTERS`, each checked for its type, so a profile file can confine
a job in any of these ways but cannot, say, change its user or its command. `extends` names a profile whose
settings this one starts from. `[checks]` says what sjob-shim verifies from inside the unit before it runs the
command (fail closed: systemd can skip a sandbox feature it is not permitted to set up, with only a log line).

Loading is done once at startup (and on reload); every error names the file and the key.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from supervisor.errors import ErrorCode, SjobError

_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
CHECKS = ("no_network", "no_new_privileges", "seccomp", "no_capabilities", "read_only_system", "isolate_processes")


class ProfileError(Exception):
    """A profile file is wrong; the message names the file and the key."""


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    properties: tuple[tuple[str, object], ...]  # (D-Bus property name, value), in the order they are sent
    checks: tuple[str, ...]  # the CHECKS sjob-shim performs
    network: bool  # whether jobs under it may reach the network


@dataclasses.dataclass(frozen=True, slots=True)
class Profiles:
    by_name: Mapping[str, Profile]

    def get(self, name: str) -> Profile:
        profile = self.by_name.get(name)
        if profile is None:
            raise SjobError(
                ErrorCode.InvalidArgument,
                f"unknown profile {name[:40]!r}",
                hint=f"the profiles are: {', '.join(sorted(self.by_name))}",
            )
        return profile


def _bool(key: str, value: object) -> list[tuple[str, object]]:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return [(key, value)]


def _string(*allowed: str) -> Callable[[str, object], list[tuple[str, object]]]:
    def convert(key: str, value: object) -> list[tuple[str, object]]:
        if not isinstance(value, str) or (allowed and value not in allowed):
            raise TypeError(" or ".join(f'"{a}"' for a in allowed) if allowed else "a string")
        return [(key, value)]

    return convert


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError("a list of strings")
    return list(value)


def _string_list(key: str, value: object) -> list[tuple[str, object]]:
    return [(key, _strings(value))]


def _paths(key: str, value: object) -> list[tuple[str, object]]:
    paths = _strings(value)
    for path in paths:
        if not path.removeprefix("-").startswith("/") or "\n" in path:
            raise TypeError('a list of absolute paths, each optionally prefixed with "-" (ignored if missing)')
    return [(key, paths)]


def _temporary(key: str, value: object) -> list[tuple[str, object]]:
    """TemporaryFileSystem=: "PATH" or "PATH:OPTIONS" (mount options such as mode=1777)."""
    entries = []
    for entry in _strings(value):
        path, _, options = entry.partition(":")
        if not path.startswith("/") or not all(c.isalnum() or c in "=,_" for c in options):
            raise TypeError('a list of absolute paths, each optionally with ":OPTIONS" such as ":mode=1777"')
        entries.append((path, options))
    return [(key, entries)]


def _syscalls(allow: bool) -> Callable[[str, object], list[tuple[str, object]]]:
    def convert(key: str, value: object) -> list[tuple[str, object]]:
        names = _strings(value)
        return [("SystemCallFilter", (allow, names))] if names else []

    return convert


def _address_families(key: str, value: object) -> list[tuple[str, object]]:
    families = _strings(value)
    for family in families:
        if not family.startswith("AF_") or not hasattr(socket, family):
            raise TypeError(f"address family names such as AF_UNIX ({family!r} is not one)")
    return [(key, (True, families))]


def _capabilities(key: str, value: object) -> list[tuple[str, object]]:
    if value != []:
        raise TypeError("[] (jobs get no capabilities)")
    return [(key, 0)]


def _namespaces(key: str, value: object) -> list[tuple[str, object]]:
    if value is not True:
        raise TypeError("true (jobs may not create namespaces)")
    return [(key, 0)]  # the set of namespace types allowed: none


def _umask(key: str, value: object) -> list[tuple[str, object]]:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise TypeError("an octal number such as 0o077")
    return [(key, value)]


def _errno(key: str, value: object) -> list[tuple[str, object]]:
    if not isinstance(value, str) or not hasattr(errno, value):
        raise TypeError('an errno name such as "EPERM"')
    return [(key, getattr(errno, value))]


def _ip_deny(key: str, value: object) -> list[tuple[str, object]]:
    if value == "any":
        return [(key, [(int(socket.AF_INET), b"\0" * 4, 0), (int(socket.AF_INET6), b"\0" * 16, 0)])]
    if value == "":
        return [(key, [])]
    raise TypeError('"any" or "" (no filter)')


_CONVERTERS: dict[str, Callable[[str, object], list[tuple[str, object]]]] = {
    "PrivateNetwork": _bool,
    "PrivateIPC": _bool,
    "TemporaryFileSystem": _temporary,
    "RestrictAddressFamilies": _address_families,
    "IPAddressDeny": _ip_deny,
    "ProtectSystem": _string("strict", "full", "yes"),
    "ProtectHome": _string("read-only", "tmpfs", "yes"),
    "PrivateTmp": _bool,
    "PrivateDevices": _bool,
    "UMask": _umask,
    "ProtectKernelTunables": _bool,
    "ProtectKernelModules": _bool,
    "ProtectKernelLogs": _bool,
    "ProtectControlGroups": _bool,
    "ProtectClock": _bool,
    "ProtectHostname": _bool,
    "ProtectProc": _string("invisible", "noaccess", "ptraceable"),
    "InaccessiblePaths": _paths,
    "KeyringMode": _string("private"),
    "RemoveIPC": _bool,
    "NoNewPrivileges": _bool,
    "CapabilityBoundingSet": _capabilities,
    "AmbientCapabilities": _capabilities,
    "RestrictSUIDSGID": _bool,
    "RestrictRealtime": _bool,
    "RestrictNamespaces": _namespaces,
    "LockPersonality": _bool,
    "MemoryDenyWriteExecute": _bool,
    "SystemCallFilter": _syscalls(allow=True),
    "SystemCallFilterDeny": _syscalls(allow=False),
    "SystemCallErrorNumber": _errno,
    "SystemCallArchitectures": _string_list,
    "SyslogLevelPrefix": _bool,
}


def load(directories: Sequence[Path]) -> Profiles:
    """Every *.toml profile in `directories`; a file in an earlier directory hides one of the same name later."""
    raw: dict[str, tuple[Path, dict[str, object]]] = {}
    for directory in reversed(directories):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            if not _NAME.fullmatch(path.stem):
                raise ProfileError(f"{path}: a profile name is lowercase letters, digits and '-'")
            try:
                raw[path.stem] = (path, tomllib.loads(path.read_text()))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                raise ProfileError(f"{path}: {e}") from None
    if not raw:
        raise ProfileError(f"no sandbox profiles found in {', '.join(map(str, directories))}")
    return Profiles({name: _resolve(name, raw, ()) for name in raw})


def _resolve(name: str, raw: Mapping[str, tuple[Path, dict[str, object]]], seen: tuple[str, ...]) -> Profile:
    path, data = raw[name]
    unknown = set(data) - {"extends", "description", "unit", "checks"}
    if unknown:
        raise ProfileError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: extends, description, unit, checks)")
    unit = _table(path, data, "unit")
    checks = _table(path, data, "checks")
    base_settings: dict[str, object] = {}
    base_checks: dict[str, object] = {}
    if "extends" in data:
        parent = data["extends"]
        if not isinstance(parent, str) or parent not in raw:
            raise ProfileError(f"{path}: extends = {parent!r} is not a profile ({', '.join(sorted(raw))})")
        if parent in seen or parent == name:
            raise ProfileError(f"{path}: profiles extend each other in a loop ({' -> '.join((*seen, name, parent))})")
        _resolve(parent, raw, (*seen, name))  # validates the parent
        base_settings = dict(_table(raw[parent][0], raw[parent][1], "unit"))
        base_checks = dict(_table(raw[parent][0], raw[parent][1], "checks"))
    settings = {**base_settings, **unit}
    wanted = {**base_checks, **checks}
    properties: list[tuple[str, object]] = []
    for key, value in settings.items():
        convert = _CONVERTERS.get(key)
        if convert is None:
            raise ProfileError(f"{path}: [unit] {key} is not a property a profile may set")
        try:
            properties += convert(key, value)
        except TypeError as e:
            raise ProfileError(f"{path}: [unit] {key} = {value!r}: expected {e}") from None
    for key, value in wanted.items():
        if key not in CHECKS or not isinstance(value, bool):
            raise ProfileError(f"{path}: [checks] {key}: known checks are {', '.join(CHECKS)}, each true or false")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ProfileError(f"{path}: description must be a string")
    return Profile(
        name=name,
        description=description,
        properties=tuple(properties),
        checks=tuple(c for c in CHECKS if wanted.get(c)),
        network=not settings.get("PrivateNetwork", False),
    )


def _table(path: Path, data: Mapping[str, object], key: str) -> dict[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ProfileError(f"{path}: [{key}] must be a table")
    return value
