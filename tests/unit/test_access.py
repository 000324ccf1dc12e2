"""Policy rules, decisions, tokens and their audit: pure, with a fake audit sink and keys in a temp directory."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from supervisor import policy
from supervisor.access import Access, Account, check_run_as, read_uid_min
from supervisor.auth import Principal, TokenIdentity
from supervisor.errors import ErrorCode, SjobError
from supervisor.policy import Action, Owner
from supervisor.policyfile import PolicyError, parse_policy
from supervisor.tokens import ALGORITHM, AUDIENCE, ISSUER, Keys, TokenStore

from .fakes import POLICY_DIR, FakeAudit

ALICE = Principal(1000, 1000, 10, "alice", frozenset({"alice"}))
BOB = Principal(1001, 1001, 11, "bob", frozenset({"bob"}))
ADMIN = Principal(1002, 1002, 12, "carol", frozenset({"carol", "sjob-admin"}))
ROOT = Principal(0, 0, 1, "root", frozenset({"root"}))
SHIPPED = (POLICY_DIR / "default.toml").read_text()
CI_RULE = """
[[rules]]
name = "ci"
tokens = ["ci-runner"]
run_as = "ci"
actions = ["run", "status", "logs"]
max_jobs = 2
[rules.profiles]
allowed = ["strict"]
[rules.limits.default]
memory = "512M"
[rules.limits.max]
memory = "1G"
"""


def load(extra: str = "") -> policy.Policy:
    return parse_policy(SHIPPED + extra, "/etc/sjob/policy.toml")


def test_shipped_policy_grants_local_users_their_own_jobs_and_admins_everyones() -> None:
    p = load()
    assert policy.decide(p, ALICE, Action.run).allowed
    assert policy.decide(p, ALICE, Action.status, owner=Owner(ALICE.uid, ALICE.name)).allowed
    refused = policy.decide(p, ALICE, Action.stop, owner=Owner(BOB.uid, BOB.name))
    assert (refused.allowed, refused.not_owner) == (False, True)
    for who in (ADMIN, ROOT):
        for action in (Action.status, Action.logs, Action.stop):
            assert policy.decide(p, who, action, owner=Owner(BOB.uid, BOB.name)).allowed
        assert policy.decide(p, who, Action.tokens).allowed
    assert not policy.decide(p, ALICE, Action.tokens).allowed


def test_scheduling_is_granted_and_capped_by_rules_and_never_to_tokens() -> None:
    p = load()
    local = next(r for r in p.rules if r.name == "local users")
    assert {Action.queue, Action.retry, Action.schedule} <= local.actions
    assert (local.max_queued, local.max_retries, local.max_timers, local.queue_by_default) == (64, 10, 16, False)
    custom = parse_policy(
        '[[rules]]\nname = "x"\nusers = ["*"]\nactions = ["run"]\nmax_queued = 0\nqueue_by_default = true\n'
        '[[rules]]\nname = "ci"\ntokens = ["*"]\nrun_as = "ci"\n',
        "p.toml",
    )
    plain = custom.rules[0]
    assert (plain.max_queued, plain.queue_by_default, plain.max_retries, plain.max_timers) == (0, True, 10, 16)
    for action in (Action.queue, Action.retry, Action.schedule):
        assert not policy.decide(custom, ALICE, action).allowed
    token = Principal(1002, 1002, 3, "ci", token=TokenIdentity("ci", "t", frozenset({"run", "schedule", "retry"})))
    assert policy.decide(custom, token, Action.retry).allowed
    refused = policy.decide(custom, token, Action.schedule)
    assert (refused.allowed, refused.reason) == (False, "tokens may not make timers")


def test_deny_by_default_and_first_matching_rule_wins() -> None:
    text = SHIPPED.replace('users = ["*"]', 'users = ["alice"]')
    p = parse_policy(text, "policy.toml")
    assert policy.decide(p, ALICE, Action.run).allowed
    decision = policy.decide(p, BOB, Action.run)
    assert not decision.allowed
    assert "no policy rule grants bob anything" in decision.reason
    narrow = parse_policy(
        text.replace(
            "\n[[rules]]\n", '\n[[rules]]\nname = "readonly"\ngroups = ["bob"]\nactions = ["status"]\n\n[[rules]]\n', 1
        ),
        "policy.toml",
    )
    assert not policy.decide(narrow, BOB, Action.run).allowed
    assert policy.decide(narrow, BOB, Action.status).allowed


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('[[rules]]\nname = "x"\n', "matches nobody"),
        ('[[rules]]\nusers = ["a"]\n', "has no name"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nrun_as = "bob"\n', "local users always run jobs as themselves"),
        ('[[rules]]\nname = "x"\ntokens = ["t"]\n', "run_as must name the local user"),
        ('[[rules]]\nname = "x"\ntokens = ["t"]\nrun_as = "root"\n', "never run as root"),
        ('[[rules]]\nname = "x"\ntokens = ["t"]\nusers = ["a"]\nrun_as = "ci"\n', "mixes tokens"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nactions = ["run", "tokens"]\n', "actions must be a list of"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nmax_jobs = -1\n', "max_jobs"),
        ('[[rules]]\nname = "x"\nusers = ["a b"]\n', "not a valid name"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nsurprise = 1\n', "[rules 'x'] unknown key 'surprise'"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\n[rules.limits.max]\nmemory = "1X"\n', "rules 'x'.limits.max"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\n[rules.limits.max]\ntasks = 10\n', "is above"),
        ('[[rules]]\nname = "local users"\nusers = ["a"]\n', "two [[rules]] are named 'local users'"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nmax_queued = -1\n', "max_queued must be a whole number"),
        (
            '[[rules]]\nname = "x"\nusers = ["a"]\nmax_retries = 101\n',
            "max_retries must be a whole number from 0 to 100",
        ),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nmax_timers = "3"\n', "max_timers must be a whole number"),
        ('[[rules]]\nname = "x"\nusers = ["a"]\nqueue_by_default = "yes"\n', "queue_by_default must be true or false"),
    ],
)
def test_policy_rule_errors_name_the_file_and_rule(extra: str, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        load("\n" + extra)
    assert "/etc/sjob/policy.toml" in str(e.value)
    assert words in str(e.value)


def test_a_policy_without_rules_is_refused_with_what_to_add() -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy("[profiles]\ndefault = 'strict'\n", "p.toml")
    assert "no [[rules]]" in str(e.value)


def test_rules_override_limits_and_profiles_key_by_key() -> None:
    p = load(CI_RULE)
    ci = next(r for r in p.rules if r.name == "ci")
    assert ci.profiles.allowed == ("strict",)
    assert ci.limits.maximum.memory_max == 1 << 30
    assert ci.limits.maximum.tasks_max == 16384  # inherited
    assert ci.limits.default.memory_max == 512 << 20
    with pytest.raises(PolicyError) as e:  # lowering the ceiling below the inherited default (2G) alone
        load(CI_RULE.replace('[rules.limits.default]\nmemory = "512M"\n', ""))
    assert "[rules 'ci'.default] is above [rules 'ci'.max]" in str(e.value)


# --- tokens ----------------------------------------------------------------------------------------------------


class Setup:
    def __init__(self, tmp_path: Path, extra: str = CI_RULE) -> None:
        Keys.create(tmp_path / "keys")
        self.keys = Keys(tmp_path / "keys")
        self.store = TokenStore(tmp_path / "tokens.sqlite")
        self.audit = FakeAudit()
        self.users = {
            "ci": Account(1500, 1500, frozenset({"ci"})),
            "rootish": Account(0, 0, frozenset({"root"})),
            "sysuser": Account(999, 999, frozenset({"sysuser"})),
            "sudoer": Account(1600, 1600, frozenset({"sudoer", "sudo"})),
        }
        self.access = Access(load(extra), self.audit, self.keys, self.store, self.users.get)

    def issue(self) -> str:
        token, _ = self.access.issue_token(ROOT, "ci-runner", None, None, now())
        return token

    def kid(self) -> str:
        assert self.keys.signing_kid is not None
        return self.keys.signing_kid

    def forge(self, payload: dict[str, object], **header: object) -> str:
        """A token signed with the real key but claims of our choosing."""
        key = serialization.load_pem_private_key((self.keys.directory / f"{self.kid()}.pem").read_bytes(), None)
        return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": self.kid(), **header})  # type: ignore[arg-type]


def now() -> int:
    return time.time_ns() // 1000


def claims(**over: object) -> dict[str, object]:
    t = int(time.time())
    base: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ci-runner", "jti": "x", "iat": t, "exp": t + 60}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: bytes, header: dict[str, object], payload: dict[str, object]) -> str:
    """The classic confusion attack: HMAC keyed with the verifier's public key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def test_a_token_runs_as_its_mapped_user_with_its_scope(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    principal = s.access.authenticate(ALICE, s.issue(), now())
    assert (principal.uid, principal.gid, principal.user, principal.name) == (1500, 1500, "ci", "token:ci-runner")
    assert principal.token is not None
    assert not principal.is_root
    assert s.access.authorize(principal, Action.run).allowed
    with pytest.raises(SjobError):
        s.access.authorize(principal, Action.stop)  # not in the rule's actions
    with pytest.raises(SjobError):
        s.access.authorize(principal, Action.tokens)  # a token's bearer is never an admin
    entry = s.audit.entries[-4]  # authenticate, then run, stop and tokens
    assert (entry.action, entry.allowed) == ("authenticate", True)
    assert entry.fields()["SJOB_PRINCIPAL"] == "token:ci-runner"
    assert entry.fields()["SJOB_TOKEN_ID"] == principal.token.token_id


def test_only_admins_issue_tokens_and_ttl_is_capped(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    with pytest.raises(SjobError) as e:
        s.access.issue_token(ALICE, "ci-runner", None, None, now())
    assert e.value.code is ErrorCode.PermissionDenied
    with pytest.raises(SjobError) as e:
        s.access.issue_token(ADMIN, "ci-runner", None, 31 * 86400 * 1_000_000, now())
    assert "at most 2592000s" in e.value.message
    with pytest.raises(SjobError):
        s.access.issue_token(ADMIN, "ci-runner", frozenset({"tokens"}), None, now())


def test_a_token_revoked_or_expired_since_a_request_stops_what_it_queued(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    _, record = s.access.issue_token(ROOT, "ci-runner", None, 60_000_000, now())
    bearer = Principal(1002, 1002, 3, "ci", token=TokenIdentity("ci-runner", record.token_id, frozenset({"run"})))
    assert s.access.token_problem(ALICE, now()) is None
    assert s.access.token_problem(bearer, now()) is None
    assert s.access.token_problem(bearer, record.expires_usec) == f"token {record.token_id} has expired"
    s.access.revoke_token(ROOT, record.token_id, now())
    assert s.access.token_problem(bearer, now()) == f"token {record.token_id} was revoked by root"
    stranger = Principal(1002, 1002, 3, "ci", token=TokenIdentity("ci-runner", "nope", frozenset({"run"})))
    assert s.access.token_problem(stranger, now()) == "token nope is not known to this sjobd"


def test_revoked_and_unknown_tokens_are_refused(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    token, record = s.access.issue_token(ROOT, "ci-runner", None, None, now())
    s.access.revoke_token(ADMIN, record.token_id, now())
    with pytest.raises(SjobError) as e:
        s.access.authenticate(ALICE, token, now())
    assert "revoked by carol" in e.value.message
    assert [t.revoked_by for t in s.access.list_tokens(ROOT)] == ["carol"]


def test_a_damaged_token_store_is_set_aside_and_its_tokens_are_refused(tmp_path: Path) -> None:
    """A tokens.sqlite SQLite finds damaged is moved aside and a new one begins (sjobd failed at every start):
    safe, since a token sjobd has no record of is refused. Fail closed, and a new token can be issued."""
    s = Setup(tmp_path)
    token = s.issue()
    s.store._db.close()
    (tmp_path / "tokens.sqlite").write_bytes(b"\0" * 8192)
    s = Setup(tmp_path)
    with pytest.raises(SjobError) as e:
        s.access.authenticate(ALICE, token, now())
    assert "was not issued by this sjobd" in e.value.message, e.value
    assert len(list(tmp_path.glob("tokens.sqlite.damaged-*"))) == 1
    assert s.access.authenticate(ALICE, s.issue(), now()).name == "token:ci-runner"


def test_without_a_signing_key_token_requests_are_refused_and_audited() -> None:
    audit = FakeAudit()
    access = Access(load(CI_RULE), audit)  # no keys, no token store: sjobd started without them
    with pytest.raises(SjobError) as e:
        access.authenticate(ALICE, "x.y.z", now())
    assert (e.value.code, "tokens are not set up" in e.value.message) == (ErrorCode.PermissionDenied, True)
    for request in (
        lambda: access.issue_token(ROOT, "ci-runner", None, None, now()),
        lambda: access.list_tokens(ROOT),
        lambda: access.revoke_token(ROOT, "0" * 32, now()),
    ):
        with pytest.raises(SjobError) as e:
            request()
        assert (e.value.code, e.value.message) == (ErrorCode.InvalidArgument, "tokens are not set up in this sjobd")
        assert "sjobd --new-key" in (e.value.hint or "")
    assert [(x.action, x.allowed) for x in audit.entries if not x.allowed] == [("authenticate", False)] + [
        ("tokens", False)
    ] * 3


@pytest.mark.parametrize(
    ("attack", "words"),
    [
        ("alg-none", "algorithm 'none' refused"),
        ("hs256-with-public-key", "algorithm 'HS256' refused"),
        ("expired", "expired"),
        ("no-exp", "lacks the 'exp' claim"),
        ("far-future-exp", "exceeds the maximum"),
        ("wrong-aud", "not for sjobd"),
        ("wrong-iss", "not issued by sjobd"),
        ("unknown-kid", "unknown key id"),
        ("no-jti", "lacks the 'jti' claim"),
        ("unissued-jti", "was not issued by this sjobd"),
        ("tampered", "signature does not verify"),
        ("huge", "longer than 8192 bytes"),
        ("garbage", "not a token"),
        ("unmapped-subject", "no policy rule is for token subject 'stranger'"),
    ],
)
def test_token_attacks_are_refused_with_a_reason_and_an_audit_entry(tmp_path: Path, attack: str, words: str) -> None:
    s = Setup(tmp_path)
    t = int(time.time())
    public = s.keys.public(s.kid())
    assert public is not None
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    real = s.issue()
    unsigned = f"{b64(json.dumps({'alg': 'none', 'kid': s.kid()}).encode())}.{b64(json.dumps(claims()).encode())}."
    tokens = {
        "alg-none": unsigned,
        "hs256-with-public-key": hs256(pem, {"alg": "HS256", "kid": s.kid()}, claims()),
        "expired": s.forge(claims(iat=t - 7200, exp=t - 3600)),
        "no-exp": s.forge(claims(exp=None)),
        "far-future-exp": s.forge(claims(exp=t + 365 * 86400)),
        "wrong-aud": s.forge(claims(aud="someone-else")),
        "wrong-iss": s.forge(claims(iss="mallory")),
        "unknown-kid": s.forge(claims(), kid="20990101000000-deadbeef"),
        "no-jti": s.forge(claims(jti=None)),
        "unissued-jti": s.forge(claims(jti="f" * 32)),
        "tampered": real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),
        "huge": "a" * 1_000_000,
        "garbage": "\x00\xff not a jwt",
        "unmapped-subject": s.forge(claims(sub="stranger", jti=s.store.list()[0].token_id)),
    }
    with pytest.raises(SjobError) as e:
        s.access.authenticate(ALICE, tokens[attack], now())
    assert e.value.code is ErrorCode.PermissionDenied
    assert words in e.value.message
    entry = s.audit.entries[-1]
    assert (entry.action, entry.allowed, entry.principal) == ("authenticate", False, ALICE)
    assert words in entry.reason
    assert tokens[attack][:100] not in json.dumps(entry.fields())  # the token is never logged


def test_audit_entries_carry_the_fields_journalctl_filters_on() -> None:
    audit = FakeAudit()
    access = Access(load(), audit)
    with pytest.raises(SjobError) as e:
        access.authorize(ALICE, Action.stop, job_id="abcd1234", owner=Owner(BOB.uid, BOB.name))
    assert e.value.code is ErrorCode.NoSuchJob  # someone else's job looks missing...
    fields = audit.entries[-1].fields()
    assert fields["SJOB_JOB_ID"] == "abcd1234"  # ...but the audit tells the truth
    assert (fields["SJOB_ACTION"], fields["SJOB_DECISION"], fields["SJOB_PRINCIPAL"]) == ("stop", "denied", "alice")
    assert fields["SJOB_REASON"] == "the job belongs to another user"
    token = Principal(1500, 1500, 9, "ci", token=TokenIdentity("ci-runner", "jti1", frozenset({"run"})))
    assert access.authorize(ADMIN, Action.status, job_id="abcd1234", owner=Owner(token.uid, token.name)).allowed


def test_repeated_allowed_decisions_are_recorded_once_refusals_always() -> None:
    audit = FakeAudit()
    access = Access(load(), audit)
    for _ in range(5):  # `sjob stop` polling status
        access.authorize(ALICE, Action.status, job_id="abcd1234", owner=Owner(ALICE.uid, ALICE.name))
    for _ in range(3):
        with pytest.raises(SjobError):
            access.authorize(BOB, Action.status, job_id="abcd1234", owner=Owner(ALICE.uid, ALICE.name))
    assert [(e.principal, e.allowed) for e in audit.entries] == [(ALICE, True)] + [(BOB, False)] * 3


def _token(subject: str, uid: int = 1500) -> Principal:
    return Principal(uid, uid, 9, "ci", token=TokenIdentity(subject, f"jti-{subject}", frozenset(policy.JOB_ACTIONS)))


@pytest.mark.parametrize(
    ("who", "owner", "sees"),
    [
        (_token("ci-a"), Owner(1500, "token:ci-a"), True),
        (_token("ci-a"), Owner(1500, "token:ci-b"), False),  # same run_as user, another subject
        (_token("ci-a"), Owner(1500, "ci"), False),  # the run_as user's own job
        (Principal(1500, 1500, 9, "ci"), Owner(1500, "token:ci-a"), True),  # the user sees their tokens' jobs
        (ALICE, Owner(BOB.uid, "bob"), False),
        (ALICE, Owner(ALICE.uid, "alice"), True),
    ],
)
def test_a_job_is_its_starters_and_a_token_sees_only_its_subjects(who: Principal, owner: Owner, sees: bool) -> None:
    p = load(CI_RULE.replace('"ci-runner"', '"ci-a", "ci-b"'))
    decision = policy.decide(p, who, Action.status, owner)
    assert decision.allowed is sees
    if not sees:
        assert decision.not_owner


@pytest.mark.parametrize(
    ("run_as", "words"),
    [
        ("sysuser", "uid 999 is a system user"),
        ("sudoer", "privileged group sudo"),
        ("rootish", "never run as root"),
    ],
)
def test_token_jobs_never_run_as_a_privileged_user(tmp_path: Path, run_as: str, words: str) -> None:
    s = Setup(tmp_path, CI_RULE.replace('run_as = "ci"', f'run_as = "{run_as}"'))
    with pytest.raises(PolicyError) as e:  # at load...
        check_run_as(s.access.policy, "/etc/sjob/policy.toml", s.users.get, 1000)
    assert "/etc/sjob/policy.toml: [rules 'ci'] run_as" in str(e.value)
    assert words in str(e.value)
    with pytest.raises(SjobError) as refused:  # ...and at each use, as groups change after a load
        s.access.authenticate(ALICE, s.issue(), now())
    assert words in refused.value.message
    assert (s.audit.entries[-1].action, s.audit.entries[-1].allowed) == ("authenticate", False)


def test_a_privileged_run_as_needs_the_rule_to_say_so(tmp_path: Path) -> None:
    rule = CI_RULE.replace('run_as = "ci"', 'run_as = "sudoer"\nallow_privileged_run_as = true')
    s = Setup(tmp_path, rule)
    check_run_as(s.access.policy, "/etc/sjob/policy.toml", s.users.get, 1000)
    assert s.access.authenticate(ALICE, s.issue(), now()).uid == 1600
    s.users["sudoer"] = Account(0, 0, frozenset())  # root stays refused whatever the rule says
    with pytest.raises(SjobError, match="never run as root"):
        s.access.authenticate(ALICE, s.issue(), now())
    with pytest.raises(PolicyError, match="only with tokens"):
        load('[[rules]]\nname = "x"\nusers = ["bob"]\nallow_privileged_run_as = true\n')


def test_an_admin_group_of_the_policy_counts_as_privileged(tmp_path: Path) -> None:
    s = Setup(tmp_path, CI_RULE)
    s.users["ci"] = Account(1500, 1500, frozenset({"ci", "sjob-admin"}))
    with pytest.raises(PolicyError, match="privileged group sjob-admin"):
        check_run_as(s.access.policy, "p.toml", s.users.get, 1000)


def test_uid_min_comes_from_login_defs(tmp_path: Path) -> None:
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nUID_MIN\t\t 2000\nUID_MAX 60000\n")
    assert read_uid_min(str(defs)) == 2000
    assert read_uid_min(str(tmp_path / "missing")) == 1000


# --- acting later for who asked earlier (a queued job's start, a timer's check: review of J) --------------------


def test_a_local_user_later_keeps_only_the_groups_they_had_and_still_have(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.users["carol"] = Account(1002, 1002, frozenset({"carol", "sjob-admin"}))
    then = ADMIN
    assert s.access.current(then, Action.run, now()).groups == {"carol", "sjob-admin"}
    s.users["carol"] = Account(1002, 1002, frozenset({"carol", "sudo"}))  # out of sjob-admin, into sudo
    later = s.access.current(then, Action.run, now())
    assert later.groups == {"carol"}  # a right lost is lost; one gained since is not taken
    assert not s.access.is_admin(later)
    for gone in (None, Account(1003, 1002, frozenset({"carol"}))):  # removed, or the name now another uid
        if gone is None:
            del s.users["carol"]
        else:
            s.users["carol"] = gone
        with pytest.raises(SjobError) as e:
            s.access.current(then, Action.run, now(), "job1")
        assert (e.value.code, e.value.message) == (ErrorCode.PermissionDenied, "user carol (uid 1002) no longer exists")
        last = s.audit.entries[-1]
        assert (last.action, last.allowed, last.job_id) == ("run", False, "job1")


def test_a_tokens_bearer_later_needs_the_token_good_and_mapped_to_the_same_user(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    then = s.access.authenticate(ALICE, s.issue(), now())
    assert s.access.current(then, Action.run, now()) == then
    s.users["ci"] = Account(1500, 1500, frozenset({"ci", "sudo"}))  # run_as joined a privileged group
    with pytest.raises(SjobError, match="privileged group sudo"):
        s.access.current(then, Action.run, now())
    s.users["ci"] = Account(1501, 1501, frozenset({"ci"}))  # the rule's user is now another uid
    with pytest.raises(SjobError, match="now maps its tokens to 'ci'"):
        s.access.current(then, Action.run, now())
    s.users["ci"] = Account(1500, 1500, frozenset({"ci"}))
    assert then.token is not None
    s.access.revoke_token(ROOT, then.token.token_id, now())
    with pytest.raises(SjobError, match="was revoked by root"):
        s.access.current(then, Action.run, now())


def test_a_local_user_later_needs_the_group_id_they_asked_with(tmp_path: Path) -> None:
    """Review of J: a job asked for under another group id (`sg projectx sjob run --queue ...`) runs with it: a
    user taken out of that group since is refused, not run with its id."""
    s = Setup(tmp_path)
    s.users["alice"] = Account(1000, 1000, frozenset({"alice", "projectx"}), frozenset({1000, 2000}))
    then = Principal(1000, 2000, 10, "alice", frozenset({"alice", "projectx"}))
    assert s.access.current(then, Action.run, now()).gid == 2000
    s.users["alice"] = Account(1000, 1000, frozenset({"alice"}), frozenset({1000}))
    with pytest.raises(SjobError, match="user alice is no longer in group 2000"):
        s.access.current(then, Action.run, now())


def test_a_group_joined_since_that_changes_the_rule_refuses(tmp_path: Path) -> None:
    """Review of J's fixes: rules match first to last, so an admin may restrict a user by putting them in a group
    whose rule comes first; what they asked for before must not go on under the rule of the groups they had."""
    s = Setup(tmp_path)
    everyone = s.access.policy.rules[-1]
    quarantine = dataclasses.replace(
        everyone, name="quarantine", users=frozenset(), groups=frozenset({"quarantine"}), actions=frozenset()
    )
    s.access.policy = dataclasses.replace(s.access.policy, rules=(quarantine, *s.access.policy.rules))
    s.users["alice"] = Account(1000, 1000, frozenset({"alice"}), frozenset({1000}))
    assert s.access.current(ALICE, Action.run, now()).groups == {"alice"}
    s.users["alice"] = Account(1000, 1000, frozenset({"alice", "quarantine"}), frozenset({1000, 3000}))
    with pytest.raises(SjobError, match="the policy rule for alice is now 'quarantine', not 'local users'"):
        s.access.current(ALICE, Action.run, now())
