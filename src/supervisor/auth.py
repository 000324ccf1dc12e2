"""Who is asking: the principal behind a request.

A local caller is identified by the kernel (SO_PEERCRED on the Unix socket), never by anything it sends. The
principal is what every decision in `policy` and every job record is keyed on.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """A local user as the kernel vouches for them."""

    uid: int
    gid: int
    pid: int
    user: str  # the passwd name, or the uid as text if there is none

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid})"
