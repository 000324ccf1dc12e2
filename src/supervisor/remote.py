"""`sjob -H [USER@]HOST`: reaching sjobd on another machine over ssh, as `systemctl -H` does.

The client runs `ssh -xT [-l USER] -- HOST sjob --bridge` and speaks Varlink through the session's stdin and stdout;
on HOST, `sjob --bridge` (`bridge`) copies them to and from sjobd's socket. sjobd there identifies the caller by
the kernel's word (SO_PEERCRED of the bridge), so the remote identity is the ssh login user, as a local `sjob` run
in that ssh session would be: no token is needed, and none of this machine's is sent.

ssh ignores SIGINT here (it leaves an ignored SIGINT ignored), so Ctrl-C reaches only `sjob`, which then stops the
job over another connection, as it does locally; ssh's own prompts (a password, a host key) still work, since it
stays in the terminal's foreground process group.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess

from supervisor import environment
from supervisor.client import RECEIVE_SIZE, Transport
from supervisor.errors import ErrorCode, SjobError, invalid_argument
from supervisor.waiting import wait_readable

REMOTE_COMMAND = ("sjob", "--bridge")  # found in the remote PATH (/usr/local/bin, where install.sh puts it)
SSH_FAILED = 255  # ssh's own failures: cannot resolve, connect or authenticate
NOT_FOUND = 127  # the remote shell found no sjob
UNAVAILABLE = 69  # the bridge could not reach sjobd there (EX_UNAVAILABLE, as sjob's own)
EXIT_WAIT = 5.0  # seconds to wait for ssh's exit status after the connection ended, to say why


def parse_host(text: str) -> tuple[str | None, str]:
    """(USER or None, HOST) of `[USER@]HOST`; refuse what ssh would read as an option or cannot be a name."""
    user, at, host = text.rpartition("@")
    if not host or (at and not user) or any(c.isspace() or not c.isprintable() for c in text):
        raise invalid_argument(f"-H: {text[:60]!r} is not [USER@]HOST", hint="e.g. sjob -H alice@build1 list")
    if host.startswith("-") or user.startswith("-"):
        raise invalid_argument(f"-H: {text[:60]!r} is not [USER@]HOST: it starts with '-'")
    return user or None, host


def ssh_command(host: str) -> list[str]:
    """The command line that opens the session: $SJOB_SSH (split as a shell would; default `ssh`), no X11
    forwarding and no terminal (-xT), the user as -l, and `--` before the host so that it cannot be an option."""
    user, name = parse_host(host)
    ssh = shlex.split(os.environ.get(environment.SSH) or "ssh")
    return [*ssh, "-xT", *(["-l", user] if user else []), "--", name, *REMOTE_COMMAND]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SshTransport(Transport):
    """An ssh session to HOST running `sjob --bridge`: bytes only, no descriptors."""

    passes_fds = False

    def __init__(self, host: str) -> None:
        self.host = host
        self.name = f"sjobd on {host}"
        argv = ssh_command(host)
        try:
            self._ssh = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                preexec_fn=_ignore_sigint,  # noqa: PLW1509 - no threads yet: sjob connects before any start
            )
        except OSError as e:
            raise SjobError(
                ErrorCode.NotConnected,
                f"cannot run {argv[0]} to reach {host}: {e.strerror}",
                hint=f"install the ssh client, or name it in ${environment.SSH}",
            ) from e
        stdin, stdout = self._ssh.stdin, self._ssh.stdout
        if stdin is None or stdout is None:  # cannot be: PIPE makes them
            raise SjobError(ErrorCode.InternalError, "ssh's pipes are missing")
        self._to = stdin.fileno()
        self._from = stdout.fileno()

    def send(self, data: bytes, fds: list[int]) -> None:
        assert not fds  # noqa: S101 - Client refuses descriptors before it sends
        view = memoryview(data)
        while view:
            view = view[os.write(self._to, view) :]

    def receive(self) -> tuple[bytes, list[int]]:
        wait_readable(self._from)
        return os.read(self._from, RECEIVE_SIZE), []

    def close(self) -> None:
        for stream in (self._ssh.stdin, self._ssh.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            self._ssh.wait(EXIT_WAIT)  # the bridge ends with its stdin, and ssh with it
        except subprocess.TimeoutExpired:
            self._ssh.kill()
            self._ssh.wait()

    def lost(self, detail: str) -> SjobError:
        """Why the session ended, as far as ssh's exit status tells (ssh and the bridge said more on stderr)."""
        try:
            status = self._ssh.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            status = None
        if status == SSH_FAILED:
            return SjobError(
                ErrorCode.NotConnected,
                f"ssh could not reach {self.host}",
                hint=f"'ssh {self.host} true' must work; ${environment.SSH} gives ssh options (a key, a port)",
            )
        if status == NOT_FOUND:
            return SjobError(
                ErrorCode.NotConnected,
                f"sjob is not installed on {self.host} (or not in the PATH of its ssh sessions)",
                hint="install it there with 'sudo ./install.sh'; -H runs 'sjob --bridge' on the remote end",
            )
        if status == UNAVAILABLE:
            return SjobError(
                ErrorCode.NotConnected,
                f"sjobd on {self.host} cannot be reached",
                hint=f"'ssh {self.host} systemctl status sjobd.socket' tells why",
            )
        how = f" (ssh exited with status {status})" if status else ""
        return SjobError(
            ErrorCode.NotConnected,
            f"lost the connection to sjobd on {self.host}{detail}{how}",
            hint="running jobs are not affected",
        )
