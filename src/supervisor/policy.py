"""Who may do what. Pure decisions, no I/O.

For now the rule is the one every local user expects: you run jobs as yourself and see only your own; root sees
everyone's. A job that belongs to someone else is reported exactly like a missing one, so ids leak nothing.
"""

from __future__ import annotations

from supervisor.auth import Principal


def may_view(principal: Principal, owner_uid: int) -> bool:
    return principal.is_root or principal.uid == owner_uid


def run_as(principal: Principal) -> tuple[int, int]:
    """The uid and gid a principal's jobs run as: always the caller's own, whatever the request says."""
    return principal.uid, principal.gid
