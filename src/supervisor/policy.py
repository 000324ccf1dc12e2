"""Who may do what. Pure decisions, no I/O: every request sjobd serves is decided here, and every decision is
audited by the caller (`access`).

The model, read from policy.toml by `policyfile`:
- Rules, tried in order; the first whose `users`, `groups` or `tokens` match the principal applies. It grants
  actions (run, stop, status, logs, list; queue, retry, schedule; call, deploy), sandbox profiles, default and
  maximum limits, and caps on concurrent jobs, queued jobs, retries and timers; for token subjects it names the
  local user their jobs run as. A principal no rule matches may do nothing. Tokens never make timers.
- Everyone acts on their own jobs only. Another user's job looks exactly like a missing one, except to admins:
  root and the users and groups of [admins] may see, read and stop everyone's jobs, and issue tokens. A token's
  bearer is never an admin. A token's own jobs are those its subject started: two subjects mapped to one
  `run_as` user do not see each other's (issue E.3). A local user's own jobs are those that run as their uid,
  their tokens' included: those processes are theirs already (they may signal and trace them).
"""

from __future__ import annotations

import dataclasses
import enum
import typing

from supervisor.auth import Principal
from supervisor.limits import LimitPolicy
from supervisor.protocol import Limits

EVERYONE = "*"
DEFAULT_MAX_TOKEN_TTL_USEC = 30 * 86400 * 1_000_000


class Action(enum.StrEnum):
    run = "run"
    stop = "stop"
    status = "status"
    logs = "logs"
    list = "list"
    call = "call"  # call functions (each function's own allow list says which)
    deploy = "deploy"  # deploy functions, and roll back and remove one's own
    queue = "queue"  # wait in one's queue when at max_jobs instead of being refused (sjob run --queue)
    retry = "retry"  # have a failed job run again (sjob run --retry)
    schedule = "schedule"  # make timers that run jobs later and again (sjob run --on-calendar, --on-active)
    tokens = "tokens"  # issue, list and revoke tokens: admins only, never granted by a rule
    authenticate = "authenticate"  # present a token (audited; decided by the token's checks)


JOB_ACTIONS = frozenset(
    {Action.run, Action.stop, Action.status, Action.logs, Action.list, Action.queue, Action.retry, Action.schedule}
)
RULE_ACTIONS = JOB_ACTIONS | {Action.call, Action.deploy}  # what a rule may grant
DEFAULT_ACTIONS = JOB_ACTIONS | {Action.call}  # what a rule grants when it does not say
ON_OTHERS_JOBS = frozenset({Action.stop, Action.status, Action.logs})  # what admins may do to anyone's job


@dataclasses.dataclass(frozen=True, slots=True)
class ProfilePolicy:
    default: str = "strict"
    allowed: tuple[str, ...] = ("strict", "network")


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    actions: frozenset[Action] = DEFAULT_ACTIONS
    users: frozenset[str] = frozenset()  # names; "*" is every local user
    groups: frozenset[str] = frozenset()
    tokens: frozenset[str] = frozenset()  # token subjects; "*" is every token
    profiles: ProfilePolicy = dataclasses.field(default_factory=ProfilePolicy)
    limits: LimitPolicy = dataclasses.field(default_factory=LimitPolicy)
    max_jobs: int | None = None  # running at once, per user the jobs run as
    max_queued: int = 16  # waiting in the user's queue at once (with the `queue` action)
    queue_by_default: bool = False  # at max_jobs, `sjob run` queues without being asked (--queue)
    max_retries: int = 10  # the most a job may be retried (with the `retry` action)
    max_timers: int = 16  # timers a user may have at once (with the `schedule` action)
    run_as: str | None = None  # for token subjects: the local user; local users always run as themselves
    allow_privileged_run_as: bool = False  # run_as may be a system user or in a privileged group (never root)

    def matches(self, principal: Principal) -> bool:
        if principal.token is not None:
            return bool(self.tokens & {EVERYONE, principal.token.subject})
        return bool(self.users & {EVERYONE, principal.user} or self.groups & principal.groups)


# A token's run_as user in one of these groups would hand the token's bearer that group's powers (sudo, reading
# every log, the docker socket, raw disks, sjob admin); besides these, the policy's [admins] groups count.
PRIVILEGED_GROUPS = frozenset(
    {"root", "sudo", "adm", "wheel", "sjob-admin", "docker", "lxd", "disk", "shadow", "systemd-journal"}
)
FIRST_LOGIN_UID = 1000  # login.defs' UID_MIN, unless sjobd read another
NOBODY_UID = 65534


EVERYONE_RULE = Rule("everyone", users=frozenset({EVERYONE}))


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """How long records of finished jobs are kept ([records] in policy.toml), so /var/lib/sjob cannot grow without
    bound: at most `per_user` of each user's (the newest), none ended longer than `max_age_usec` ago. Records of
    jobs that have not ended are always kept. The output stays in journald, under journald's own retention."""

    max_age_usec: int = 90 * 86400 * 1_000_000
    per_user: int = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class OutputQuota:
    """How much output one job may put into journald ([output] in policy.toml), enforced by its forwarder: beyond
    `max_bytes` the job is stopped (`stop`) or the rest is dropped (`drop`). One job must not be able to rotate
    everyone else's output and the audit trail out of the journal."""

    max_bytes: int = 1 << 30
    on_exceed: typing.Literal["stop", "drop"] = "stop"


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionsPolicy:
    """How functions run ([functions] in policy.toml, issue G)."""

    runtime: str = "/opt/sjob/runtime"  # the shared Python environment (with pandas) every function runs in
    pip_args: tuple[str, ...] = ()  # extra arguments for pip in a --requirements build (an index, --no-index ...)
    concurrency: int = 4  # a function's cap on calls at once, unless its deploy says otherwise
    queue: int = 8  # calls that may wait for a free slot, per function; beyond it a call is busy at once
    queue_wait_usec: int = 30 * 1_000_000  # how long a call waits in the queue before it is busy
    build_timeout_usec: int = 15 * 60 * 1_000_000  # a deploy's build (compile, pip install) at most
    timeout_usec: int = 15 * 60 * 1_000_000  # a call at most, unless its deploy set --timeout


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = (EVERYONE_RULE,)
    admin_users: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    per_user: Limits = dataclasses.field(default_factory=Limits)  # a user's jobs together: cpu, memory, tasks
    max_token_ttl_usec: int = DEFAULT_MAX_TOKEN_TTL_USEC
    retention: Retention = dataclasses.field(default_factory=Retention)
    output: OutputQuota = dataclasses.field(default_factory=OutputQuota)
    functions: FunctionsPolicy = dataclasses.field(default_factory=FunctionsPolicy)


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    """Whose a job is: the uid it runs as, and the principal that started it (`alice`, or `token:ci-runner`)."""

    uid: int
    principal: str


def owns(principal: Principal, owner: Owner) -> bool:
    if principal.token is not None:
        return owner.principal == principal.name
    return owner.uid == principal.uid


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: Rule | None = None
    not_owner: bool = False  # denied because the job is someone else's: answer as if it did not exist


def rule_for(policy: Policy, principal: Principal) -> Rule | None:
    return next((rule for rule in policy.rules if rule.matches(principal)), None)


def is_admin(policy: Policy, principal: Principal) -> bool:
    if principal.token is not None:
        return False
    return principal.is_root or principal.user in policy.admin_users or bool(policy.admin_groups & principal.groups)


def decide(policy: Policy, principal: Principal, action: Action, owner: Owner | None = None) -> Decision:
    """May `principal` do `action` (to a job of `owner`, if one is named)?"""
    admin = is_admin(policy, principal)
    if action is Action.tokens:
        if admin:
            return Decision(True, "admin")
        return Decision(False, "only root and sjob admins may manage tokens")
    if owner is not None and not owns(principal, owner):
        if admin and action in ON_OTHERS_JOBS:
            return Decision(True, "admin, on another user's job")
        return Decision(False, "the job belongs to another user", not_owner=True)
    if action is Action.schedule and principal.token is not None:
        # A timer runs jobs long after the request, and revoking the token would not stop it.
        return Decision(False, "tokens may not make timers")
    rule = rule_for(policy, principal)
    if rule is None:
        if admin and action in ON_OTHERS_JOBS | {Action.list}:
            return Decision(True, "admin")
        return Decision(False, f"no policy rule grants {principal.name} anything")
    granted = rule.actions if principal.token is None else rule.actions & principal.token.scope
    if action not in granted:
        why = "the token's scope" if action in rule.actions else f"policy rule {rule.name!r}"
        return Decision(False, f"{why} does not allow {action.value}", rule)
    return Decision(True, f"policy rule {rule.name!r}", rule)


def run_as_problem(
    policy: Policy, rule: Rule, uid: int, groups: frozenset[str], uid_min: int = FIRST_LOGIN_UID
) -> str | None:
    """Why the token rule `rule` may not run jobs as its run_as user (of `uid`, in `groups`), or None.

    Checked when the policy is loaded and again at each authentication, since groups change after a load."""
    if uid == 0:
        return "token jobs never run as root"
    if rule.allow_privileged_run_as:
        return None
    if uid < uid_min or uid == NOBODY_UID:
        return f"uid {uid} is a system user (login users start at {uid_min})"
    if rule.run_as in policy.admin_users:
        return "it is an sjob admin ([admins] users)"
    privileged = groups & (PRIVILEGED_GROUPS | policy.admin_groups)
    if privileged:
        return f"it is in the privileged group{'s' if len(privileged) > 1 else ''} {', '.join(sorted(privileged))}"
    return None
