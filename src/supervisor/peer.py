"""Who is at the other end of a connection to sjobd, in the kernel's words, and whether sjobd talks to it at all.

Each accepted connection is identified once, by SO_PEERCRED (uid, gid), SO_PEERGROUPS (supplementary groups) and,
where the kernel offers it (Linux 6.5), SO_PEERPIDFD, so the pid in the log and audit cannot be a reused one; the
peer's /proc/PID/cgroup tells whether it runs inside a job. A peer inside a job, or whose uid has no passwd entry,
is refused (`refuse_peer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import os
import pwd
import select
import socket
import struct

from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError
from supervisor.peercgroup import inside_job

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)


@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    """What the kernel says about the process at the other end of a connection."""

    principal: Principal
    cgroup: str | None  # its /proc/PID/cgroup, or None if that could not be read for sure (it counts as a job's)
    in_passwd: bool  # whether its uid has a passwd entry


def identify(conn: socket.socket) -> Peer:
    """The kernel's word on who is at the other end of `conn`."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    try:
        name, in_passwd = pwd.getpwuid(uid).pw_name, True
    except KeyError:
        name, in_passwd = str(uid), False
    pid, cgroup = _peer_process(conn, pid)
    principal = Principal(uid=uid, gid=gid, pid=pid, user=name, groups=_group_names(conn, gid))
    return Peer(principal, cgroup, in_passwd)


def _group_names(conn: socket.socket, gid: int) -> frozenset[str]:
    """The peer's primary and supplementary groups by name (SO_PEERGROUPS, Linux 4.13)."""
    gids = {gid}
    # Python caps getsockopt's buffer at 1024 bytes: 256 groups. A peer in more gets ERANGE, and is matched by its
    # primary group only (policy rules by group then miss; rules by user name still apply).
    with contextlib.suppress(OSError):
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        gids.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    names = set()
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            continue
    return frozenset(names)


def read_cgroup(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
        return f.read(65536)


def _peer_process(conn: socket.socket, pid: int) -> tuple[int, str | None]:
    """The peer's pid and cgroup. Through a pidfd (SO_PEERPIDFD, Linux 6.5) the pid is -1 if the process is gone,
    so a pid reused since the connect is never named, and the cgroup counts only if the pidfd's process is still
    alive after /proc/PID/cgroup was read (so the file was that process's). Older kernels: SO_PEERCRED's pid as
    it was at connect(), and its cgroup file as it is now. Either way, None for a cgroup that cannot be read: the
    caller fails closed."""
    try:
        pidfd = struct.unpack("i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    except OSError as e:
        if e.errno == errno.ENOPROTOOPT:  # a kernel without SO_PEERPIDFD: the pid as it was at connect()
            return pid, _cgroup_of(pid)
        # Any other error (kernels 6.5 to 6.15 answer EINVAL once the peer has been reaped) means the peer is gone
        # and its pid may name another process by now: falling back would read that one's cgroup (review of E.3).
        return -1, None
    try:
        pid = -1
        with contextlib.suppress(OSError, ValueError), open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
        if pid <= 0:
            return -1, None
        cgroup = _cgroup_of(pid)
        # A pidfd polls readable once its process has exited (no permission needed, unlike a signal 0, which
        # sjobd without CAP_KILL may not send to other users): then the pid may already name another process.
        alive = select.poll()
        alive.register(pidfd, select.POLLIN)
        if alive.poll(0):
            return -1, None
        return pid, cgroup
    finally:
        os.close(pidfd)


def _cgroup_of(pid: int) -> str | None:
    if pid <= 0:  # 0: the peer is in a pid namespace we cannot see into
        return None
    try:
        return read_cgroup(pid)
    except OSError:
        return None


def refuse_peer(peer: Peer) -> SjobError | None:
    """Why a peer may not talk to sjobd at all, if it may not (issue E.3).

    A process inside a job (sjob.slice) is refused: otherwise a job without network could ask for one with network,
    an admin's job would act with its owner's admin groups, and a token's job would run under the local users'
    rule instead of its token's. A uid without a passwd entry (a subordinate uid of a user namespace) is nobody
    policy can name, so it gets nothing rather than a set of caps of its own."""
    if peer.cgroup is None or inside_job(peer.cgroup):
        why = "requests from inside an sjob job are refused"
        if peer.cgroup is None:
            why += " (and this caller's cgroup could not be read, so it counts as one)"
        return SjobError(
            ErrorCode.PermissionDenied,
            why,
            hint="a job may not start, list or stop jobs; run sjob from outside sjob.slice (a login session, CI)",
        )
    if not peer.in_passwd:
        return SjobError(
            ErrorCode.PermissionDenied,
            f"uid {peer.principal.uid} has no passwd entry; sjobd serves only users the system knows",
            hint="run sjob as a local user (not as a subordinate uid of a user namespace)",
        )
    return None
