"""Access control, in one place: every request's decision is taken here (by `policy.decide`), audited here, and
turned into the error the client sees. Token authentication and token management live here too.

Refusals say what was refused and why, except for someone else's job, which is refused exactly like a missing
one (`NoSuchJob`), so job ids leak nothing; the audit entry tells the truth.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import time
from collections.abc import Callable
from typing import Protocol

from supervisor import policy as decisions
from supervisor.audit import AuditEntry
from supervisor.auth import Principal, TokenIdentity
from supervisor.errors import ErrorCode, SjobError, no_such_job
from supervisor.policy import JOB_ACTIONS, Action, Decision, Owner, Policy
from supervisor.policyfile import PolicyError
from supervisor.tokens import Keys, TokenError, TokenRecord, TokenStore, issue, verify

DEFAULT_TOKEN_TTL_USEC = 86400 * 1_000_000
# An allowed decision repeated by the same process (`sjob stop` polling status, a follower reconnecting) is
# recorded once per this many seconds, so polling does not flood the journal; refusals are always recorded.
REPEAT_WINDOW = 60.0
_MAX_REMEMBERED = 4096


class AuditSink(Protocol):
    def record(self, entry: AuditEntry) -> None: ...


LOGIN_DEFS = "/etc/login.defs"


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    """A local user as passwd and group say now: what a token's run_as names."""

    uid: int
    gid: int
    groups: frozenset[str]  # names of the primary and supplementary groups
    gids: frozenset[int] = frozenset()  # their ids (the primary's too)


def lookup_user(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    names = set()
    gids = os.getgrouplist(name, entry.pw_gid)
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return Account(entry.pw_uid, entry.pw_gid, frozenset(names), frozenset(gids))


def read_uid_min(path: str = LOGIN_DEFS) -> int:
    """login.defs' UID_MIN: where login users start (system users are below). 1000 if it does not say."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "UID_MIN" and fields[1].isdigit():
                    return int(fields[1])
    except OSError:
        pass
    return decisions.FIRST_LOGIN_UID


def check_run_as(
    policy: Policy, path: str, lookup: Callable[[str], Account | None] = lookup_user, uid_min: int | None = None
) -> None:
    """Refuse, at load, a policy whose token rules run jobs as a system user or a privileged one (issue E.3).
    A run_as user that does not exist yet is not refused here: authentication refuses it until it does."""
    first = read_uid_min() if uid_min is None else uid_min
    for rule in policy.rules:
        if rule.run_as is None or (account := lookup(rule.run_as)) is None:
            continue
        problem = decisions.run_as_problem(policy, rule, account.uid, account.groups, first)
        if problem is not None:
            raise PolicyError(
                f"{path}: [rules {rule.name!r}] run_as = {rule.run_as!r}: {problem}; token jobs run as an"
                " unprivileged login user (set allow_privileged_run_as = true in that rule if this is meant)"
            )


class Access:
    def __init__(
        self,
        policy: Policy,
        audit: AuditSink,
        keys: Keys | None = None,
        tokens: TokenStore | None = None,
        lookup: Callable[[str], Account | None] = lookup_user,
        uid_min: int = decisions.FIRST_LOGIN_UID,
    ) -> None:
        self.policy = policy
        self._audit = audit
        self._keys = keys
        self._tokens = tokens
        self._lookup = lookup
        self.uid_min = uid_min
        self._recent: dict[tuple[str, int, str, str | None], float] = {}  # allowed decision -> when recorded

    # --- jobs ----------------------------------------------------------------------------------------------

    def authorize(
        self, principal: Principal, action: Action, *, job_id: str | None = None, owner: Owner | None = None
    ) -> Decision:
        """Allow (and audit) or raise (and audit) for `action`, on the job `job_id` of `owner` if given."""
        decision = decisions.decide(self.policy, principal, action, owner)
        if not (decision.allowed and self._repeated(principal, action, job_id)):
            self._audit.record(AuditEntry(principal, action.value, decision.allowed, decision.reason, job_id))
        if decision.allowed:
            return decision
        if decision.not_owner and job_id is not None:
            raise no_such_job(job_id)
        raise SjobError(
            ErrorCode.PermissionDenied,
            f"{principal.name} may not {action.value}: {decision.reason}",
            hint="ask an administrator to grant it in /etc/sjob/policy.toml",
        )

    def _repeated(self, principal: Principal, action: Action, job_id: str | None) -> bool:
        now = time.monotonic()
        key = (principal.name, principal.pid, action.value, job_id)
        if now - self._recent.get(key, -REPEAT_WINDOW) < REPEAT_WINDOW:
            return True
        if len(self._recent) >= _MAX_REMEMBERED:
            self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT_WINDOW}
            if len(self._recent) >= _MAX_REMEMBERED:
                self._recent.clear()
        self._recent[key] = now
        return False

    def decide(self, principal: Principal, action: Action) -> Decision:
        """The decision, not yet audited: for `run`, which has more to check (see `allow` and `refuse`)."""
        return decisions.decide(self.policy, principal, action)

    def allow(self, principal: Principal, action: Action, reason: str, job_id: str | None = None) -> None:
        self._audit.record(AuditEntry(principal, action.value, True, reason, job_id))

    def refuse(self, principal: Principal, action: Action, error: SjobError, job_id: str | None = None) -> SjobError:
        """Audit a refusal found after `decide` (a ceiling, a profile, the job cap); returns the error to raise."""
        self._audit.record(AuditEntry(principal, action.value, False, error.message, job_id))
        return error

    def audit(self, entry: AuditEntry) -> None:
        """Record a decision taken elsewhere (the server's connection caps)."""
        self._audit.record(entry)

    def is_admin(self, principal: Principal) -> bool:
        return decisions.is_admin(self.policy, principal)

    # --- tokens --------------------------------------------------------------------------------------------

    def token_problem(self, principal: Principal, now_usec: int) -> str | None:
        """Why what a token's bearer asked for earlier (a queued job) may no longer go ahead: the token was revoked
        or has expired since. None for a local user, or a token still good."""
        if principal.token is None:
            return None
        return self.token_id_problem(principal.token.token_id, now_usec)

    def token_id_problem(self, token_id: str, now_usec: int) -> str | None:
        """Why the token `token_id` is no longer good (revoked, expired, unknown); None if it is."""
        record = self._tokens.get(token_id) if self._tokens is not None else None
        if record is None:
            return f"token {token_id} is not known to this sjobd"
        if record.revoked_usec is not None:
            return f"token {token_id} was revoked by {record.revoked_by}"
        if record.expires_usec <= now_usec:
            return f"token {token_id} has expired"
        return None

    def authenticate(self, peer: Principal, token: str, now_usec: int) -> Principal:
        """The principal a token stands for, connected from `peer`; raises PermissionDenied (audited) if refused."""
        try:
            if peer.token is not None:
                raise TokenError("this connection has already presented a token")
            keys, store = self._token_setup()
            claims = verify(keys, token, self.policy.max_token_ttl_usec, now_usec)
            record = store.get(claims.token_id)
            if record is None:
                raise TokenError(f"token {claims.token_id} was not issued by this sjobd")
            if record.revoked_usec is not None:
                raise TokenError(f"token {claims.token_id} was revoked by {record.revoked_by}")
            identity = TokenIdentity(claims.subject, claims.token_id, claims.scope)
            rule, account = self._token_account(identity)
        except TokenError as e:
            self._audit.record(AuditEntry(peer, Action.authenticate.value, False, str(e)))
            raise SjobError(
                ErrorCode.PermissionDenied,
                f"token refused: {e}",
                hint="ask an sjob administrator for a new token ('sjob token issue')",
            ) from None
        principal = Principal(account.uid, account.gid, peer.pid, str(rule.run_as), token=identity)
        self._audit.record(
            AuditEntry(principal, Action.authenticate.value, True, f"token from {peer}, policy rule {rule.name!r}")
        )
        return principal

    def _token_account(self, identity: TokenIdentity) -> tuple[decisions.Rule, Account]:
        """The policy rule for a token's subject and the local user it maps the token to, as they are now; a
        TokenError if there is none, or that user may not run token jobs (again at each use: the user may have
        joined a group, or changed uid, since the policy was loaded)."""
        rule = decisions.rule_for(self.policy, Principal(-1, -1, 0, identity.subject, token=identity))
        if rule is None or rule.run_as is None:
            raise TokenError(f"no policy rule is for token subject {identity.subject!r}")
        account = self._lookup(rule.run_as)
        if account is None:
            raise TokenError(f"policy rule {rule.name!r} maps tokens to {rule.run_as!r}, who does not exist")
        problem = decisions.run_as_problem(self.policy, rule, account.uid, account.groups, self.uid_min)
        if problem is not None:
            raise TokenError(f"policy rule {rule.name!r} maps tokens to {rule.run_as!r}: {problem}")
        return rule, account

    def current(self, principal: Principal, action: Action, now_usec: int, job_id: str | None = None) -> Principal:
        """The principal who asked earlier, as it stands now: to act on what it asked for later (a queued job's
        start, a timer's check at a reload or a run). A token must still be good and its subject's rule still map
        it to the same user; a local user must still exist with the same uid, and keeps only the groups they had
        then *and* have now (passwd and group say), so rights can be lost meanwhile, never gained. Otherwise a
        PermissionDenied saying why (audited under `action`)."""
        try:
            if principal.token is not None:
                if (problem := self.token_problem(principal, now_usec)) is not None:
                    raise TokenError(problem)
                rule, mapped = self._token_account(principal.token)
                if mapped.uid != principal.uid:
                    raise TokenError(f"policy rule {rule.name!r} now maps its tokens to {rule.run_as!r}")
                return dataclasses.replace(principal, gid=mapped.gid)
            account = self._lookup(principal.user)
            if account is None or account.uid != principal.uid:
                raise TokenError(f"user {principal.user} (uid {principal.uid}) no longer exists")
            # The job runs with the group id it was asked with (`sg projectx sjob run ...`): still theirs?
            if principal.gid != account.gid and principal.gid not in account.gids:
                raise TokenError(f"user {principal.user} is no longer in group {principal.gid}")
            kept = dataclasses.replace(principal, groups=principal.groups & account.groups)
            # A group joined since may be one an admin put them in to restrict them (rules: first match wins):
            # the rule for who they are now must be the one for the groups kept.
            then = decisions.rule_for(self.policy, kept)
            now = decisions.rule_for(self.policy, dataclasses.replace(principal, groups=account.groups))
            if then is not now:
                names = [f"{rule.name!r}" if rule is not None else "none" for rule in (now, then)]
                raise TokenError(f"the policy rule for {principal.user} is now {names[0]}, not {names[1]}")
            return kept
        except TokenError as e:
            error = SjobError(ErrorCode.PermissionDenied, str(e), hint="ask again, as who you are now")
            raise self.refuse(principal, action, error, job_id) from None

    def issue_token(
        self, principal: Principal, subject: str, scope: frozenset[str] | None, ttl_usec: int | None, now_usec: int
    ) -> tuple[str, TokenRecord]:
        self.authorize(principal, Action.tokens)
        keys, store = self._token_setup(principal)
        ttl = ttl_usec if ttl_usec is not None else min(DEFAULT_TOKEN_TTL_USEC, self.policy.max_token_ttl_usec)
        try:
            if not 0 < ttl <= self.policy.max_token_ttl_usec:
                raise TokenError(
                    f"ttl must be more than 0 and at most {self.policy.max_token_ttl_usec // 1_000_000}s"
                    " ([tokens] max_ttl in policy.toml)"
                )
            token, claims = issue(keys, subject, scope or JOB_ACTIONS, ttl, now_usec)
        except TokenError as e:
            raise self.refuse(principal, Action.tokens, SjobError(ErrorCode.InvalidArgument, str(e))) from None
        record = TokenRecord(
            claims.token_id,
            subject,
            tuple(sorted(claims.scope)),
            principal.name,
            claims.issued_usec,
            claims.expires_usec,
        )
        store.add(record)
        self._audit.record(
            AuditEntry(principal, "issue-token", True, f"for subject {subject!r}", token_id=claims.token_id)
        )
        return token, record

    def list_tokens(self, principal: Principal) -> list[TokenRecord]:
        self.authorize(principal, Action.tokens)
        return self._token_setup(principal)[1].list()

    def revoke_token(self, principal: Principal, token_id: str, now_usec: int) -> TokenRecord:
        self.authorize(principal, Action.tokens)
        record = self._token_setup(principal)[1].revoke(token_id[:64], principal.name, now_usec)
        if record is None:
            raise SjobError(
                ErrorCode.InvalidArgument, f"no token with id {token_id[:64]!r}", hint="see 'sjob token list'"
            )
        self._audit.record(AuditEntry(principal, "revoke-token", True, "revoked", token_id=record.token_id))
        return record

    def _token_setup(self, principal: Principal | None = None) -> tuple[Keys, TokenStore]:
        """The signing keys and the token store. Without them, a TokenError (for authenticate, which refuses and
        audits it), or with `principal` the refusal of that admin's token request."""
        if self._keys is not None and self._tokens is not None:
            return self._keys, self._tokens
        problem = "tokens are not set up in this sjobd"
        if principal is None:
            raise TokenError(problem)
        hint = "create a signing key with 'sjobd --new-key' (install.sh does) and restart sjobd"
        raise self.refuse(principal, Action.tokens, SjobError(ErrorCode.InvalidArgument, problem, hint=hint))
