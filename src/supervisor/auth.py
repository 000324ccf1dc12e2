"""Who is asking: the principal behind a request.

A local caller is identified by the kernel (SO_PEERCRED on the Unix socket: uid, gid; SO_PEERGROUPS: the
supplementary groups), never by anything it sends. A token principal is a connection that presented a valid token
(see `tokens`): it acts as the local user policy maps its subject to. The principal is what every decision in
`policy`, every job record and every audit entry is keyed on.
"""

from __future__ import annotations

import dataclasses


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
