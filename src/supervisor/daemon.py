"""sjobd: wiring and lifecycle. Startup -> serve -> graceful shutdown.

Under systemd, sjobd is socket-activated by sjobd.socket and reports readiness with sd_notify (Type=notify). For
development it also runs in the foreground on a socket path of its own: `sjobd --socket /tmp/sjob.sock`.
Jobs do not depend on sjobd: they are systemd units and keep running while it stops or restarts.

SIGHUP (`systemctl reload sjobd`) reads policy.toml and the profiles again: a good policy applies to the requests
that follow, a bad one is logged and the policy in force stays. `sjobd --new-key` adds a token signing key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import stat
import sys
import sysconfig
import time
from collections.abc import Awaitable
from pathlib import Path

from systemd import daemon as sd_daemon

from supervisor.access import Access, check_run_as, read_uid_min
from supervisor.audit import JournalAudit
from supervisor.errors import SjobError
from supervisor.fnstore import FunctionStore
from supervisor.functions import FunctionService
from supervisor.jobs import JobService
from supervisor.journal import Journal
from supervisor.launcher import Launcher
from supervisor.ledger import Ledger
from supervisor.policy import Policy
from supervisor.policyfile import PolicyError, parse_policy
from supervisor.profiles import ProfileError, Profiles
from supervisor.profiles import load as load_profiles
from supervisor.properties import ShimCommand
from supervisor.protocol import DEFAULT_SOCKET
from supervisor.queue import JobQueue
from supervisor.reaper import Reaper
from supervisor.records import JobRecords
from supervisor.server import Server
from supervisor.systemd import Systemd
from supervisor.timers import TimerService
from supervisor.tokens import Keys, TokenStore

log = logging.getLogger("sjobd")

DEFAULT_STATE_DIR = "/var/lib/sjob"
DEFAULT_CONFIG_DIR = "/etc/sjob"
SHUTDOWN_TIMEOUT = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    return argument_parser().parse_args(argv)


def argument_parser() -> argparse.ArgumentParser:
    """sjobd's options, for parsing and for its man page, sjobd(8) (supervisor.manpages)."""
    parser = argparse.ArgumentParser(prog="sjobd", description="The sjob daemon: runs jobs as systemd units.")
    parser.add_argument(
        "--socket",
        default=None,
        help=f"listen on this Unix socket path instead of a socket passed by systemd (default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("STATE_DIRECTORY", DEFAULT_STATE_DIR),
        help="where job records are kept (default: $STATE_DIRECTORY or %(default)s)",
    )
    parser.add_argument(
        "--config-dir",
        default=DEFAULT_CONFIG_DIR,
        help="policy.toml and profiles/ of this site, over the shipped ones (default %(default)s)",
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    parser.add_argument(
        "--new-key",
        action="store_true",
        help="create a token signing key in STATE_DIR/keys (it signs new tokens; old keys still verify) and exit",
    )
    parser.add_argument(
        "--check-policy", action="store_true", help="load policy.toml and the profiles, report errors, and exit"
    )
    return parser


class _JournalStreamFormatter(logging.Formatter):
    """Prefix each line with its syslog level, which journald reads from a service's stderr."""

    LEVELS = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{self.LEVELS.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalStreamFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])


def listening_socket(path: str | None) -> socket.socket:
    """The socket systemd passed us, or a new one bound at `path`; either way in a directory only we control."""
    if path is None:
        fds = sd_daemon.listen_fds()
        if len(fds) == 1:
            sock = socket.socket(fileno=fds[0])
            check_socket_path(sock.getsockname())
            return sock
        if fds:
            raise SystemExit(f"sjobd: expected one socket from systemd, got {len(fds)}; check sjobd.socket")
        path = DEFAULT_SOCKET
    directory = Path(path).parent
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    check_socket_path(path)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, 0o666)  # noqa: S103 - everyone may connect; who they are is decided by SO_PEERCRED
    sock.listen(128)
    return sock


def check_socket_path(path: str) -> None:
    """Refuse a socket whose path someone else could swap. Every directory from / down must be a real directory
    (no symlink) owned by root or by us; the socket's own directory must not be writable by group or others,
    and those above it only if sticky (like /tmp: nobody can rename what is ours). The socket is no symlink."""
    me = os.geteuid()
    target = Path(path)
    for directory in [*reversed(target.parents)]:
        info = os.lstat(directory)
        where = f"sjobd: the socket directory {directory}"
        if stat.S_ISLNK(info.st_mode):
            raise SystemExit(f"{where} is a symlink; refusing to listen there (use a real directory)")
        if info.st_uid not in (0, me):
            raise SystemExit(f"{where} belongs to uid {info.st_uid}; it must belong to root")
        sticky_above = info.st_mode & stat.S_ISVTX and directory != target.parent
        if info.st_mode & 0o022 and not sticky_above:
            raise SystemExit(f"{where} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); chmod go-w it")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise SystemExit(f"sjobd: the socket path {path} is a symlink; refusing it")


def shim_command() -> ShimCommand:
    """sjob-shim, installed by the wheel beside this interpreter's scripts (e.g. /opt/sjob/bin/sjob-shim)."""
    path = Path(sysconfig.get_path("scripts")) / "sjob-shim"
    if not os.access(path, os.X_OK):
        raise SystemExit(f"sjobd: {path} is missing or not executable; reinstall sjob (sudo ./install.sh)")
    return ShimCommand(str(path))


def shipped_policy_dir() -> Path:
    """The policy and profiles the wheel installed (pyproject's shared-data), e.g. /opt/sjob/share/sjob/policy."""
    return Path(sysconfig.get_path("data")) / "share" / "sjob" / "policy"


def load_policy(config_dir: Path) -> tuple[Policy, Profiles]:
    """The site's policy.toml (or else the shipped default) and the profiles (the site's win by name)."""
    shipped = shipped_policy_dir()
    path = config_dir / "policy.toml"
    if not path.exists():
        path = shipped / "default.toml"
    try:
        policy = parse_policy(path.read_text(), str(path))
        check_run_as(policy, str(path))  # reads passwd and group: policy.py stays pure
        profiles = load_profiles([config_dir / "profiles", shipped / "profiles"])
    except (OSError, PolicyError, ProfileError) as e:
        raise PolicyLoadError(f"sjobd: {e}") from None
    for rule in policy.rules:
        for name in rule.profiles.allowed:
            if name not in profiles.by_name:
                raise PolicyLoadError(
                    f"sjobd: {path}: rule {rule.name!r} allows the profile {name!r}, but there is no such profile"
                )
    return policy, profiles


class PolicyLoadError(Exception):
    """policy.toml or a profile is wrong; the message says where."""


def policy_or_exit(config_dir: Path) -> tuple[Policy, Profiles]:
    """load_policy for starting up (and --check-policy): a wrong policy ends sjobd with the message."""
    try:
        return load_policy(config_dir)
    except PolicyLoadError as e:
        raise SystemExit(str(e)) from None


def reload_policy(config_dir: Path, service: JobService) -> bool:
    try:
        policy, profiles = load_policy(config_dir)
    except PolicyLoadError as e:
        log.error("reload refused, the policy in force stays: %s", e)
        return False
    service.set_policy(policy, profiles)
    log.info("policy reloaded from %s", config_dir)
    return True


@dataclasses.dataclass
class Services:
    """sjobd's parts, wired: the stores, the policy's access, and the services over them."""

    records: JobRecords
    tokens: TokenStore
    store: FunctionStore
    access: Access
    reaper: Reaper
    queue: JobQueue
    jobs: JobService
    timers: TimerService
    functions: FunctionService

    @classmethod
    def wire(cls, units: Systemd, state: Path, policy: Policy, profiles: Profiles, shim: ShimCommand) -> Services:
        records = JobRecords(state / "jobs.sqlite")
        if not any((state / "keys").glob("*.pem")):
            log.info("created token signing key %s", Keys.create(state / "keys"))
        tokens = TokenStore(state / "tokens.sqlite")
        access = Access(policy, JournalAudit(), Keys(state / "keys"), tokens, uid_min=read_uid_min())
        journal = Journal()
        ledger = Ledger(records, journal)
        reaper = Reaper(units, journal, records, ledger, lambda: access.policy.retention)
        launcher = Launcher(units, records, ledger, reaper, lambda: access.policy, shim)
        queue = JobQueue(records, ledger, launcher, access)
        jobs = JobService(units, journal, records, ledger, reaper, launcher, access, profiles, queue)
        timers = TimerService(units, journal, records, ledger, launcher, jobs, shim, access, reaper)
        store = FunctionStore(state)
        functions = FunctionService(
            store, units, journal, records, ledger, launcher, shim, access, lambda: jobs.profiles
        )
        return cls(records, tokens, store, access, reaper, queue, jobs, timers, functions)

    async def reconcile(self) -> None:
        """At startup: settle what happened while sjobd was away, then start what queues may start now."""
        await self.reaper.reconcile()
        await self.timers.reconcile()
        await self.timers.recheck()  # the policy may have changed while sjobd was away (review of J)
        self.queue.resume()

    async def close(self) -> None:
        await self.functions.close()
        await self.queue.close()
        await self.reaper.close()
        self.records.close()
        self.store.close()
        self.tokens.close()


async def serve(args: argparse.Namespace) -> int:
    shim = shim_command()
    policy, profiles = policy_or_exit(Path(args.config_dir))
    sock = listening_socket(args.socket)
    try:
        units = await Systemd.connect()
    except SjobError as e:
        log.error("%s (%s)", e.message, e.hint)
        return 1
    sjobd = Services.wire(units, Path(args.state_dir), policy, profiles, shim)
    await sjobd.reconcile()
    background = [
        asyncio.create_task(sjobd.reaper.watch_exits(), name="watch-exits"),
        asyncio.create_task(sjobd.reaper.keep_pruned(), name="prune"),
        asyncio.create_task(sjobd.timers.watch_runs(), name="watch-timer-runs"),
    ]
    server = Server(sjobd.jobs, sjobd.access, sock, sjobd.functions, sjobd.timers)
    server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, Path(args.config_dir), sjobd)
    sd_daemon.notify("READY=1\nSTATUS=Serving io.sjob.Jobs and io.sjob.Functions")
    log.info("sjobd ready on %s", sock.getsockname())
    failed = await _until_stopped(background, units.disconnected(), stop)

    sd_daemon.notify("STOPPING=1\nSTATUS=Shutting down")
    log.info("shutting down")
    await server.close(SHUTDOWN_TIMEOUT)
    await _cancelled(*background)
    await sjobd.close()
    units.close()
    return 1 if failed else 0


async def _until_stopped(
    background: list[asyncio.Task[None]], bus_lost: Awaitable[object], stop: asyncio.Event
) -> bool:
    """Serve until sjobd is asked to stop, or can no longer go on; whether it failed (then it exits non-zero, and
    systemd starts it again: Restart=on-failure)."""
    lost = asyncio.ensure_future(bus_lost)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({*background, lost, stopped}, return_when="FIRST_COMPLETED")
    finally:
        lost.cancel()
        stopped.cancel()
    # Each of `background` runs for as long as sjobd does: one that ended (a bug, a damaged database) would leave
    # sjobd serving without it, unnoticed (the pruner did so).
    ended = [task for task in background if task in done]
    for task in ended:
        error = None if task.cancelled() else task.exception()
        log.error("%s ended%s; stopping", task.get_name(), f": {error!r}" if error else "", exc_info=error)
    if lost in done:
        # Jobs' ends come with systemd's signals: without the bus, none would. Started again, sjobd's startup
        # sweep catches up.
        log.error("lost the connection to the system bus; stopping")
    return bool(ended) or lost in done


async def _cancelled(*tasks: asyncio.Task[None]) -> None:
    """Cancel the tasks and wait until they have ended; again, should one swallow its cancellation (Python 3.11's
    asyncio.wait_for can, when what it waits for completes in the same turn): shutting down must not hang."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.warning("%d background tasks did not stop when cancelled; cancelling again", len(pending))


_rechecks: set[asyncio.Task[None]] = set()


def _reload(config_dir: Path, sjobd: Services) -> None:
    sd_daemon.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\nSTATUS=Reloading policy")
    if reload_policy(config_dir, sjobd.jobs):
        sjobd.reaper.retention_changed()
        task = asyncio.create_task(sjobd.timers.recheck())  # timers the new policy no longer allows go
        _rechecks.add(task)
        task.add_done_callback(_rechecks.discard)
    sd_daemon.notify("READY=1\nSTATUS=Serving io.sjob.Jobs and io.sjob.Functions")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.debug)
    if args.new_key:
        print(f"sjobd: new token signing key {Keys.create(Path(args.state_dir) / 'keys')}")
        return
    if args.check_policy:
        policy_or_exit(Path(args.config_dir))
        print(f"sjobd: the policy in {args.config_dir} is valid")
        return
    sys.exit(asyncio.run(serve(args)))
