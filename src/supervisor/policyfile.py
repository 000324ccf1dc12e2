"""Reading policy.toml into a `policy.Policy`. Strict: an unknown key, a wrong type or a contradiction is a
`PolicyError` naming the file and the key, so sjobd refuses to start (or a reload is refused) rather than guess.

    [profiles]                 profiles every rule gets unless it says otherwise: default, allowed
    [limits.default]           limits a job gets when it asks for none (rules may override key by key)
    [limits.max]               ceilings (rules may override key by key)
    [limits.per_user]          all of one user's running jobs together: cpu, memory, tasks
    [admins]                   users, groups: may see, read and stop everyone's jobs and manage tokens
    [tokens]                   max_ttl: the longest a token may live
    [records]                  keep, keep_per_user: how long and how many finished jobs' records are kept
    [output]                   max, on_exceed: how much output one job may write, and what happens beyond
    [functions]                runtime, pip_args, concurrency, queue, queue_wait, build_timeout (issue G)
    [[rules]]                  name; users | groups | tokens; actions; max_jobs; run_as (tokens);
                               allow_privileged_run_as (tokens: run_as may be a system user or in a privileged group);
                               max_queued, queue_by_default, max_retries, max_timers (issue J);
                               [rules.profiles]; [rules.limits.default]; [rules.limits.max]
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from supervisor.errors import SjobError
from supervisor.limitforms import BY_KEY, parse_scalar
from supervisor.limits import LimitPolicy, check
from supervisor.policy import (
    DEFAULT_ACTIONS,
    DEFAULT_MAX_TOKEN_TTL_USEC,
    EVERYONE,
    RULE_ACTIONS,
    Action,
    FunctionsPolicy,
    OutputQuota,
    Policy,
    ProfilePolicy,
    Retention,
    Rule,
)
from supervisor.protocol import Limits
from supervisor.quantities import parse_duration, parse_size

_PER_USER_KEYS = {"cpu", "memory", "tasks"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
_RULE_KEYS = {
    "name",
    "users",
    "groups",
    "tokens",
    "actions",
    "max_jobs",
    "max_queued",
    "queue_by_default",
    "max_retries",
    "max_timers",
    "run_as",
    "allow_privileged_run_as",
    "profiles",
    "limits",
}
MAX_JOBS_CEILING = 100_000
MAX_QUEUED_CEILING = 100_000
MAX_RETRIES_CEILING = 100
MAX_TIMERS_CEILING = 10_000
MAX_KEEP_PER_USER = 1_000_000


class PolicyError(Exception):
    """The policy file is wrong; the message names the file and the key."""


def parse_policy(text: str, path: str) -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: {e}") from None
    _known(data, {"profiles", "limits", "admins", "tokens", "records", "output", "functions", "rules"}, path, "")
    base_profiles = _profiles(_sub(data, "profiles", path), path, "profiles", ProfilePolicy())
    limits_table = _sub(data, "limits", path)
    _known(limits_table, {"default", "max", "per_user"}, path, "limits")
    base_limits = LimitPolicy(
        default=_limits(_sub(limits_table, "default", path), path, "limits.default"),
        maximum=_limits(_sub(limits_table, "max", path), path, "limits.max"),
    )
    _consistent(base_limits, path, "limits")
    per_user = _limits(_sub(limits_table, "per_user", path), path, "limits.per_user", _PER_USER_KEYS)

    admins = _sub(data, "admins", path)
    _known(admins, {"users", "groups"}, path, "admins")
    tokens = _sub(data, "tokens", path)
    _known(tokens, {"max_ttl"}, path, "tokens")
    max_ttl = DEFAULT_MAX_TOKEN_TTL_USEC
    if "max_ttl" in tokens:
        max_ttl = _duration(tokens["max_ttl"], path, "[tokens] max_ttl")

    retention = _retention(_sub(data, "records", path), path)
    output = _output(_sub(data, "output", path), path)
    functions = _functions(_sub(data, "functions", path), path)

    rules_list = data.get("rules")
    if rules_list is None:
        raise PolicyError(
            f"{path}: no [[rules]], so nobody may do anything; add one, e.g. the shipped default's "
            '[[rules]] name = "local users", users = ["*"]'
        )
    if not isinstance(rules_list, list) or not all(isinstance(r, dict) for r in rules_list):
        raise PolicyError(f"{path}: rules must be an array of tables ([[rules]])")
    rules = tuple(_rule(r, i, path, base_profiles, base_limits) for i, r in enumerate(rules_list))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise PolicyError(f"{path}: two [[rules]] are named {next(n for n in names if names.count(n) > 1)!r}")
    return Policy(
        rules=rules,
        admin_users=frozenset(_names(admins, "users", path, "admins")),
        admin_groups=frozenset(_names(admins, "groups", path, "admins")),
        per_user=per_user,
        max_token_ttl_usec=max_ttl,
        retention=retention,
        output=output,
        functions=functions,
    )


def _functions(table: Mapping[str, Any], path: str) -> FunctionsPolicy:
    known = {"runtime", "pip_args", "concurrency", "queue", "queue_wait", "build_timeout", "timeout"}
    _known(table, known, path, "functions")
    policy = FunctionsPolicy()
    if "runtime" in table:
        runtime = table["runtime"]
        if not isinstance(runtime, str) or not runtime.startswith("/") or not runtime.isprintable():
            raise PolicyError(f"{path}: [functions] runtime must be an absolute path (a Python environment)")
        policy = dataclasses.replace(policy, runtime=runtime)
    if "pip_args" in table:
        args = table["pip_args"]
        if not isinstance(args, list) or not all(isinstance(a, str) and a.isprintable() for a in args):
            raise PolicyError(f"{path}: [functions] pip_args must be a list of strings")
        policy = dataclasses.replace(policy, pip_args=tuple(args))
    if "concurrency" in table:
        policy = dataclasses.replace(policy, concurrency=_count(table["concurrency"], 1, 1024, path, "concurrency"))
    if "queue" in table:
        policy = dataclasses.replace(policy, queue=_count(table["queue"], 0, 10_000, path, "queue"))
    if "queue_wait" in table:
        policy = dataclasses.replace(
            policy, queue_wait_usec=_duration(table["queue_wait"], path, "[functions] queue_wait")
        )
    if "timeout" in table:
        policy = dataclasses.replace(policy, timeout_usec=_duration(table["timeout"], path, "[functions] timeout"))
    if "build_timeout" in table:
        policy = dataclasses.replace(
            policy, build_timeout_usec=_duration(table["build_timeout"], path, "[functions] build_timeout")
        )
    return policy


def _output(table: Mapping[str, Any], path: str) -> OutputQuota:
    _known(table, {"max", "on_exceed"}, path, "output")
    quota = OutputQuota()
    if "max" in table:
        try:
            quota = dataclasses.replace(quota, max_bytes=parse_size(str(table["max"]), "[output] max ="))
        except SjobError as e:
            raise PolicyError(f"{path}: {e.message}") from None
    on_exceed = table.get("on_exceed", quota.on_exceed)
    if on_exceed not in ("stop", "drop"):
        raise PolicyError(f'{path}: [output] on_exceed must be "stop" or "drop"')
    return dataclasses.replace(quota, on_exceed=on_exceed)


def _count(value: object, low: int, high: int, path: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(f"{path}: [functions] {key} must be a whole number from {low} to {high}")
    return value


def _retention(table: Mapping[str, Any], path: str) -> Retention:
    _known(table, {"keep", "keep_per_user"}, path, "records")
    retention = Retention()
    if "keep" in table:
        retention = dataclasses.replace(retention, max_age_usec=_duration(table["keep"], path, "[records] keep"))
    if "keep_per_user" in table:
        count = table["keep_per_user"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_KEEP_PER_USER:
            raise PolicyError(f"{path}: [records] keep_per_user must be a whole number from 1 to {MAX_KEEP_PER_USER}")
        retention = dataclasses.replace(retention, per_user=count)
    return retention


def _rule(table: dict[str, Any], index: int, path: str, base_profiles: ProfilePolicy, base: LimitPolicy) -> Rule:
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f'{path}: [[rules]] number {index + 1} has no name (name = "...")')
    where = f"rules {name!r}"
    _known(table, _RULE_KEYS, path, where)
    users = _names(table, "users", path, where, wildcard=True)
    groups = _names(table, "groups", path, where)
    tokens = _names(table, "tokens", path, where, wildcard=True)
    if not (users or groups or tokens):
        raise PolicyError(f"{path}: [{where}] matches nobody: give users, groups or tokens")
    if tokens and (users or groups):
        raise PolicyError(f"{path}: [{where}] mixes tokens with users or groups: give tokens a rule of their own")
    run_as = table.get("run_as")
    if tokens:
        if not isinstance(run_as, str) or not _NAME.fullmatch(run_as):
            raise PolicyError(f"{path}: [{where}] run_as must name the local user that the tokens' jobs run as")
        if run_as in ("root", "0"):
            raise PolicyError(f"{path}: [{where}] run_as = {run_as!r}: token jobs never run as root")
    elif run_as not in (None, "caller"):
        raise PolicyError(f"{path}: [{where}] run_as: local users always run jobs as themselves; leave it out")
    privileged = table.get("allow_privileged_run_as", False)
    if not isinstance(privileged, bool) or (privileged and not tokens):
        raise PolicyError(f"{path}: [{where}] allow_privileged_run_as must be true or false, and only with tokens")
    actions_value = table.get("actions", sorted(DEFAULT_ACTIONS))
    if not isinstance(actions_value, list) or not all(a in RULE_ACTIONS for a in actions_value):
        raise PolicyError(
            f"{path}: [{where}] actions must be a list of: {', '.join(sorted(RULE_ACTIONS))}"
            " (admins' powers come from [admins], not from rules)"
        )
    max_jobs = table.get("max_jobs")
    if max_jobs is not None and (
        isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or not 0 <= max_jobs <= MAX_JOBS_CEILING
    ):
        raise PolicyError(f"{path}: [{where}] max_jobs must be a whole number from 0 to {MAX_JOBS_CEILING}")
    queue_by_default = table.get("queue_by_default", False)
    if not isinstance(queue_by_default, bool):
        raise PolicyError(f"{path}: [{where}] queue_by_default must be true or false")
    defaults = Rule(name)
    max_queued = _whole(table, "max_queued", defaults.max_queued, MAX_QUEUED_CEILING, path, where)
    max_retries = _whole(table, "max_retries", defaults.max_retries, MAX_RETRIES_CEILING, path, where)
    max_timers = _whole(table, "max_timers", defaults.max_timers, MAX_TIMERS_CEILING, path, where)
    profiles = _profiles(_sub(table, "profiles", path), path, f"{where}.profiles", base_profiles)
    limits_table = _sub(table, "limits", path)
    _known(limits_table, {"default", "max"}, path, f"{where}.limits")
    limits = LimitPolicy(
        default=_override(base.default, _limits(_sub(limits_table, "default", path), path, f"{where}.limits.default")),
        maximum=_override(base.maximum, _limits(_sub(limits_table, "max", path), path, f"{where}.limits.max")),
    )
    _consistent(limits, path, where)
    return Rule(
        name=name,
        actions=frozenset(Action(a) for a in actions_value),
        users=frozenset(users),
        groups=frozenset(groups),
        tokens=frozenset(tokens),
        profiles=profiles,
        limits=limits,
        max_jobs=max_jobs,
        max_queued=max_queued,
        queue_by_default=queue_by_default,
        max_retries=max_retries,
        max_timers=max_timers,
        run_as=run_as if tokens else None,
        allow_privileged_run_as=privileged,
    )


def _whole(table: Mapping[str, Any], key: str, default: int, ceiling: int, path: str, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ceiling:
        raise PolicyError(f"{path}: [{where}] {key} must be a whole number from 0 to {ceiling}")
    return value


def _profiles(table: Mapping[str, Any], path: str, where: str, base: ProfilePolicy) -> ProfilePolicy:
    _known(table, {"default", "allowed"}, path, where)
    allowed = table.get("allowed", list(base.allowed))
    default = table.get("default", base.default if base.default in allowed else None)
    if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed) or not allowed:
        raise PolicyError(f"{path}: [{where}] allowed must be a non-empty list of profile names")
    if not isinstance(default, str):
        raise PolicyError(f"{path}: [{where}] needs a default, one of allowed")
    if default not in allowed:
        raise PolicyError(f"{path}: [{where}] default {default!r} is not in allowed")
    return ProfilePolicy(default, tuple(allowed))


def _override(base: Limits, over: Limits) -> Limits:
    changes = {f.name: getattr(over, f.name) for f in dataclasses.fields(Limits) if getattr(over, f.name) is not None}
    return dataclasses.replace(base, **changes)


def _consistent(limits: LimitPolicy, path: str, where: str) -> None:
    try:
        check(None, limits)
    except SjobError as e:
        raise PolicyError(f"{path}: [{where}.default] is above [{where}.max]: {e.message}") from None


def _limits(table: Mapping[str, Any], path: str, where: str, only: set[str] | None = None) -> Limits:
    keys = only or {key for key, limit in BY_KEY.items() if not limit.per_device}
    _known(table, keys, path, where)
    values: dict[str, object] = {}
    for key, value in table.items():
        limit = BY_KEY[key]
        try:
            values[limit.field] = parse_scalar(limit.kind, str(value), f"{key} =")
        except SjobError as e:
            raise PolicyError(f"{path}: [{where}] {e.message}" + (f" ({e.hint})" if e.hint else "")) from None
    return Limits(**values)  # type: ignore[arg-type]


def _duration(value: object, path: str, where: str) -> int:
    try:
        usec = parse_duration(str(value), f"{where} =")
    except SjobError as e:
        raise PolicyError(f"{path}: {e.message}") from None
    if usec <= 0:
        raise PolicyError(f"{path}: {where} must be more than zero")
    return usec


def _names(table: Mapping[str, Any], key: str, path: str, where: str, *, wildcard: bool = False) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{path}: [{where}] {key} must be a list of names")
    for v in value:
        if not (_NAME.fullmatch(v) or (wildcard and v == EVERYONE)):
            raise PolicyError(f"{path}: [{where}] {key}: {v[:40]!r} is not a valid name")
    return list(value)


def _sub(data: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"{path}: {key} must be a table")
    return value


def _known(table: Mapping[str, Any], keys: set[str], path: str, where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        place = f"[{where}] " if where else ""
        raise PolicyError(f"{path}: {place}unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")
