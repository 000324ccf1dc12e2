"""Who is asking: the principal behind a request.

A local caller is identified by the kernel (SO_PEERCRED on the Unix socket: uid, gid; SO_PEERGROUPS: the
supplementary groups), never by anything it sends. A token principal is a connection that presented a valid token
(see `tokens`): it acts as the local user policy maps its subject to. The principal is what every decision in
`policy`, every job record and every audit entry is keyed on.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class TokenIdentity:
    """What a verified token says about its bearer."""

    subject: str
    token_id: str  # the jti: what `sjob token revoke` names
    scope: frozenset[str]  # the actions the token allows (policy may allow fewer)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """A local user as the kernel vouches for them, or a token's bearer acting as a local user."""

    uid: int
    gid: int
    pid: int  # for the log and audit only: no decision depends on it
    user: str  # the passwd name, or the uid as text if there is none
    groups: frozenset[str] = frozenset()  # names of the primary and supplementary groups
    token: TokenIdentity | None = None

    @property
    def is_root(self) -> bool:
        return self.uid == 0 and self.token is None

    @property
    def name(self) -> str:
        """How records and audit entries name the principal: `alice`, or `token:ci-runner`."""
        return self.user if self.token is None else f"token:{self.token.subject}"

    def __str__(self) -> str:
        if self.token is not None:
            return f"token {self.token.subject} (as {self.user}, uid {self.uid})"
        return f"{self.user} (uid {self.uid})"


def principal_to_wire(principal: Principal) -> dict[str, object]:
    """A principal as JSON, to act for it later (a queued job's start, a timer's recheck): who the kernel or the
    token said it was at the time of the request. The pid is not kept: no decision depends on it."""
    token = principal.token
    return {
        "uid": principal.uid,
        "gid": principal.gid,
        "user": principal.user,
        "groups": sorted(principal.groups),
        "token": None if token is None else [token.subject, token.token_id, sorted(token.scope)],
    }


def principal_from_wire(data: dict[str, Any]) -> Principal:
    """The principal `principal_to_wire` wrote (KeyError, TypeError or ValueError if it is not that)."""
    token = data["token"]
    identity = None if token is None else TokenIdentity(str(token[0]), str(token[1]), frozenset(map(str, token[2])))
    groups = frozenset(map(str, data["groups"]))
    return Principal(int(data["uid"]), int(data["gid"]), 0, str(data["user"]), groups, identity)
