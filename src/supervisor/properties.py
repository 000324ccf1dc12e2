"""A validated job spec plus who runs it, turned into the properties of a transient service unit.

All unit properties sjob ever sets are in `SIGNATURES`, with their D-Bus signatures as systemd declares them
(src/core/dbus-execute.c, dbus-service.c, dbus-unit.c, dbus-cgroup.c). The D-Bus adapter takes names, and values
from here and wraps them with these signatures; nothing else in sjob writes a property name.

Why these choices:
- Type=exec: StartTransientUnit's job fails if the shim cannot be executed, instead of "succeeding" with a dead
  unit. The shim then exec()s the command, so the job is the main process. (That the command itself exists is
  checked by the client, as systemd-run does; if it does not, the job fails with status 127 like in a shell.)
- ExecStartEx with the `no-env-expand` flag: the command's `$VAR` and `${VAR}` reach it literally. systemd does
  not expand `%` specifiers in any property set over D-Bus (systemd PR #7444; measured on 252 and 257), so
  arguments and Environment= values are passed as they are.
- ExecStopPostEx with `privileged`: the exit report (`sjob-shim --report`) runs as root so its journal entry
  (_UID=0) cannot be forged by the job; `ignore-failure`, so that a failing report cannot fail a successful job;
  `no-env-expand` and no `${SERVICE_RESULT}` arguments: it reads systemd's variables from its environment, since
  systemd writes `${X}` into the unit file as `$${X}` and a daemon-reload then broke every running job's report.
- LogRateLimitIntervalUSec=0: journald's per-unit rate limit would otherwise drop a fast writer's output.
- Every string is checked against how systemd writes it into the transient unit file (`unitfile`), here, where
  the properties are made, whatever their source (request, profile, policy): a value systemd would read back as
  something else after a daemon-reload is refused, never sent. Description= is made printable; the request's own
  fields are refused earlier with their names (jobspec).
"""

from __future__ import annotations

import dataclasses
import shlex
import typing
from collections.abc import Sequence

from supervisor import limitforms, retries, unitfile
from supervisor.auth import Principal
from supervisor.errors import invalid_argument
from supervisor.limits import unit_properties as limits_properties
from supervisor.policy import OutputQuota
from supervisor.profiles import Profile
from supervisor.protocol import MAX_GRACE_USEC, Input, JobSpec, Limits, Terminal
from supervisor.quantities import format_cpu_list

SLICE = "sjob.slice"


def user_slice(uid: int) -> str:
    """Each user's jobs share a slice under sjob.slice, so policy can cap them together."""
    return f"sjob-u{uid}.slice"


def no_new_tasks(unit: str) -> UnitProperties:
    """TasksMax=1 for a unit being killed: its processes can no longer fork, so a fork bomb cannot outrun the
    SIGKILL rounds (systemd does the same with pids.max=0 since PR #42388; D-Bus accepts 1 as the least). Set only
    once the job's main process has gone (reaper._kill_after_grace): the unit's ExecStopPost (the exit report)
    starts once the cgroup is empty, which TasksMax=1 leaves room for (systemd 257 starts it straight into the
    cgroup, where TasksMax counts; 252 moves it there after the fork, where it does not)."""
    return UnitProperties(unit, (("TasksMax", 1),))


def slice_unit(uid: int, per_user: Limits) -> UnitProperties:
    """The user's slice with the policy's caps on all their jobs together (set before each start, so a changed
    policy applies to the next job). The policy allows only cpu, memory and tasks there."""
    return UnitProperties(user_slice(uid), tuple(limits_properties(per_user)))


DEFAULT_STOP_TIMEOUT_USEC = MAX_GRACE_USEC  # systemd's DefaultTimeoutStopSec
DESCRIPTION_MAX = 240

SIGNATURES: dict[str, str] = {
    "Description": "s",
    "Type": "s",
    "ExecStartEx": "a(sasas)",
    "ExecStopPostEx": "a(sasas)",
    "User": "s",
    "Group": "s",
    "WorkingDirectory": "s",
    "Environment": "as",
    "Slice": "s",
    "NoNewPrivileges": "b",
    "PrivateTmp": "b",
    "StandardInput": "s",
    "PrivateIPC": "b",
    "TemporaryFileSystem": "a(ss)",
    "StandardInputFileDescriptor": "h",
    "StandardOutputFileDescriptor": "h",
    "StandardOutput": "s",
    "StandardError": "s",
    "LogRateLimitIntervalUSec": "t",
    "KillMode": "s",
    "TimeoutStopUSec": "t",
    "CPUAccounting": "b",
    "MemoryAccounting": "b",
    "IOAccounting": "b",
    "TasksAccounting": "b",
    # limits (dbus-cgroup.c, dbus-service.c): limitforms.TABLE declares them
    **{limit.prop: limit.signature for limit in limitforms.TABLE},
    # sandbox (dbus-execute.c, dbus-cgroup.c); profiles.py decides which a profile may set
    "ReadWritePaths": "as",
    "DynamicUser": "b",
    "BindReadOnlyPaths": "a(ssbt)",
    "BindPaths": "a(ssbt)",
    "InaccessiblePaths": "as",
    "PrivateNetwork": "b",
    "RestrictAddressFamilies": "(bas)",
    "IPAddressDeny": "a(iayu)",
    "ProtectSystem": "s",
    "ProtectHome": "s",
    "PrivateDevices": "b",
    "UMask": "u",
    "ProtectKernelTunables": "b",
    "ProtectKernelModules": "b",
    "ProtectKernelLogs": "b",
    "ProtectControlGroups": "b",
    "ProtectClock": "b",
    "ProtectHostname": "b",
    "ProtectProc": "s",
    "KeyringMode": "s",
    "RemoveIPC": "b",
    "CapabilityBoundingSet": "t",
    "AmbientCapabilities": "t",
    "RestrictSUIDSGID": "b",
    "RestrictRealtime": "b",
    "RestrictNamespaces": "t",
    "LockPersonality": "b",
    "MemoryDenyWriteExecute": "b",
    "SystemCallFilter": "(bas)",
    "SystemCallErrorNumber": "i",
    "SystemCallArchitectures": "as",
    "SyslogLevelPrefix": "b",
    # retries (dbus-service.c, dbus-unit.c; see retries)
    "Restart": "s",
    "RestartUSec": "t",
    "StartLimitBurst": "u",
    "StartLimitIntervalUSec": "t",
    # timers (dbus-timer.c; see timerunits)
    "TimersCalendar": "a(ss)",
    "TimersMonotonic": "a(st)",
    "AccuracyUSec": "t",
    "RemainAfterElapse": "b",
}
# The properties systemd C-escapes and quotes when it writes the unit file (exec_command_append_...,
# unit_concat_strv(..., UNIT_ESCAPE_C)): any string survives there. Every other string is checked (unitfile).
ESCAPED_BY_SYSTEMD = frozenset({"ExecStartEx", "ExecStopPostEx", "Environment"})


@dataclasses.dataclass(frozen=True, slots=True)
class PassedFd:
    """A file descriptor passed to systemd with the call (D-Bus type 'h'): the unit gets its own copy."""

    fd: int


@dataclasses.dataclass(frozen=True, slots=True)
class JobStdio:
    """What the job reads and, with a terminal, where the terminal's output goes: descriptors the caller passed,
    already checked (stdio.py). Without any, the job reads /dev/null."""

    stdin: int | None = None
    input: Input | None = None
    terminal_output: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ShimCommand:
    """Where sjob-shim is installed (src/shim/sjob-shim.c; the wheel puts it beside the Python scripts)."""

    path: str

    def argv(
        self,
        job_id: str,
        command: Sequence[str],
        checks: Sequence[str] = (),
        output: OutputQuota | None = None,
        terminal: Terminal | None = None,
        relay_input: bool = False,
    ) -> list[str]:
        """The shim runs `command` after verifying `checks` (profiles.CHECKS) from inside the unit, and its
        forwarder holds the job to the `output` quota; with a `terminal`, on a pseudo-terminal of that size; with
        `relay_input`, the job's stdin passes through the forwarder, which counts it."""
        options = [f"--check={','.join(checks)}"] if checks else []
        if output is not None:
            options.append(f"--output-max={output.max_bytes}:{output.on_exceed}")
        if terminal is not None:
            options.append(f"--pty={terminal.rows}x{terminal.cols}")
        if relay_input:
            options.append("--relay-input")
        return [self.path, *options, job_id, "--", *command]

    def report_argv(self, job_id: str) -> list[str]:
        """The ExecStopPost= that records how the job ended. It reads SERVICE_RESULT, EXIT_CODE and EXIT_STATUS from
        its environment: written as ${...} arguments, systemd's unit file turns them into $${...} on the next
        daemon-reload (sjob-shim.c)."""
        return [self.path, "--report", job_id]


@dataclasses.dataclass(frozen=True, slots=True)
class UnitProperties:
    """The name and properties of one transient unit, in the order they are sent."""

    name: str
    properties: tuple[tuple[str, object], ...]

    def __post_init__(self) -> None:
        for key, value in self.properties:
            if key not in ESCAPED_BY_SYSTEMD:
                _check_unit_file_value(key, value, unitfile.Kind.line)

    def signed(self) -> list[tuple[str, str, object]]:
        """(name, D-Bus signature, value) triples; an unknown property name is a bug and raises KeyError."""
        return [(key, SIGNATURES[key], value) for key, value in self.properties]

    def get(self, key: str) -> object:
        return dict(self.properties)[key]


def _check_unit_file_value(key: str, value: object, kind: unitfile.Kind) -> None:
    """Refuse a value systemd would not read back from the unit file as it was sent. A bug if a request reaches
    it: jobspec refuses such requests with a better message; this is the one place that holds for every source."""
    if isinstance(value, str):
        if (problem := unitfile.problem(value, kind)) is not None:
            raise invalid_argument(
                f"{key}= '{unitfile.escape(value[:80])}' cannot be written into a unit file safely: it has {problem}"
            )
    elif isinstance(value, list | tuple):
        for item in value:
            _check_unit_file_value(key, item, unitfile.Kind.word)


def describe(job_id: str, principal: Principal, argv: Sequence[str], kind: str = "sjob") -> str:
    """The unit's Description=: who ran what, short enough for `systemctl status`, and printable: it is written into
    the unit file as it is, so a newline in an argument would start a setting of its own (see unitfile). `kind`
    leads it: "sjob" for a job, "sjob timer" for a timer."""
    text = unitfile.escape(f"{kind} {job_id} by {principal.name} (uid {principal.uid}): {shlex.join(argv)}")
    if len(text) > DESCRIPTION_MAX:
        text = text[: DESCRIPTION_MAX - 1] + "…"
    # shlex.join quotes an argument that ends in a backslash, and escape() doubles it; should that ever change, a
    # final backslash would join the unit file's next line.
    return text if unitfile.problem(text, unitfile.Kind.line) is None else text.rstrip(" \\") + "…"


def _with_inaccessible(props: list[tuple[str, object]], path: str) -> list[tuple[str, object]]:
    """`props` with `path` added to InaccessiblePaths= (one property: systemd appends a second one's paths, which
    would not read back as sent)."""
    for i, (key, value) in enumerate(props):
        if key == "InaccessiblePaths":
            props[i] = (key, [*typing.cast(list[str], value), path])
            return props
    return [*props, ("InaccessiblePaths", [path])]


def checks(profile: Profile, limits: Limits) -> list[str]:
    """What sjob-shim verifies from inside the unit before it runs the job: the profile's sandbox, and the CPUs
    the job may use (the kernel can leave a cpuset it cannot apply unenforced). Comma-separated on its command
    line, so the CPU list joins its ranges with '+'."""
    found = list(profile.checks)
    if limits.allowed_cpus is not None:
        found.append("cpus=" + format_cpu_list(limits.allowed_cpus).replace(",", "+"))
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Bind:
    """A directory of the host shown to the job at another path (BindPaths=, BindReadOnlyPaths=)."""

    source: str
    target: str
    read_only: bool = True


DYNAMIC = -1  # as uid: a user systemd makes for the unit alone (DynamicUser=), for code that is not the caller's


def job_unit(
    unit: str,
    job_id: str,
    spec: JobSpec,
    principal: Principal,
    uid: int,
    gid: int,
    shim: ShimCommand,
    limits: Limits,
    profile: Profile,
    output: OutputQuota | None = None,
    stdio: JobStdio = JobStdio(),
    *,
    charged_to: int | None = None,
    binds: Sequence[Bind] = (),
    environment: Sequence[str] = (),
    shown_as: Sequence[str] | None = None,
    relay_input: bool = False,
    overrides: Sequence[tuple[str, object]] = (),
) -> UnitProperties:
    """The transient service for one job; `spec` must already be validated (jobspec.validate), `limits` checked
    against the policy (limits.check). It runs as `uid`:`gid`, or with uid DYNAMIC as a user of its own; in the
    slice of `charged_to` (by default `uid`'s), with `binds` mounted and `environment` set besides the spec's;
    its description shows `shown_as` as its command (by default the spec's)."""
    slice_owner = uid if charged_to is None else charged_to
    identity: list[tuple[str, object]] = (
        [("DynamicUser", True)] if uid == DYNAMIC else [("User", str(uid)), ("Group", str(gid))]
    )
    report = shim.report_argv(job_id)
    argv = shim.argv(job_id, spec.argv, checks(profile, limits), output, spec.terminal, relay_input)
    props: list[tuple[str, object]] = [
        ("Description", describe(job_id, principal, spec.argv if shown_as is None else shown_as)),
        ("Type", "exec"),
        ("ExecStartEx", [(shim.path, argv, ["no-env-expand"])]),
        # ignore-failure: should the report itself fail, that must not turn a successful job into a failed unit.
        ("ExecStopPostEx", [(report[0], report, ["privileged", "ignore-failure", "no-env-expand"])]),
        *identity,
        ("WorkingDirectory", spec.cwd),
        ("Slice", user_slice(slice_owner)),
        ("NoNewPrivileges", True),
        ("PrivateTmp", True),
        # The caller's pipe, file or socket, as it is: its bytes never pass through sjobd (issue F).
        *(
            [("StandardInputFileDescriptor", PassedFd(stdio.stdin))]
            if stdio.stdin is not None
            else [("StandardInput", "null")]
        ),
        # Only the shim's own complaints go here; the job's output goes through the shim's pipes. With a terminal,
        # the shim's stdout is the pipe its forwarder copies the terminal's output to, for the caller.
        *(
            [("StandardOutputFileDescriptor", PassedFd(stdio.terminal_output))]
            if stdio.terminal_output is not None
            else [("StandardOutput", "journal")]
        ),
        ("StandardError", "journal"),
        ("LogRateLimitIntervalUSec", 0),
        ("KillMode", "control-group"),
        ("TimeoutStopUSec", DEFAULT_STOP_TIMEOUT_USEC),
        # So that the job's cgroup has the counters its exit report reads (cpu.stat, memory.peak, io.stat, pids.peak).
        ("CPUAccounting", True),
        ("MemoryAccounting", True),
        ("IOAccounting", True),
        ("TasksAccounting", True),
        *limits_properties(limits),
        *profile.properties,
    ]
    replaced = {key for key, _ in overrides}
    props = [(key, value) for key, value in props if key not in replaced] + list(overrides)
    if stdio.terminal_output is None:
        # No terminal: none at all. Host's /dev/pts is in PrivateDevices='s /dev, and a job runs as its owner, who
        # may have other terminals open there: a job could read their keystrokes (review of F).
        props = _with_inaccessible(props, "-/dev/pts")
    if spec.cwd != "/":
        # The working directory is the one place the job may write (with its private /tmp); never all of /.
        # "-": a missing directory is then reported by WorkingDirectory= (status 200), not as a namespace failure.
        props.append(("ReadWritePaths", [f"-{spec.cwd}"]))
    for kind, read_only in (("BindReadOnlyPaths", True), ("BindPaths", False)):
        if chosen := [(b.source, b.target, False, 0) for b in binds if b.read_only == read_only]:
            props.append((kind, chosen))
    if spec.environment or environment:
        props.append(("Environment", [*(spec.environment or []), *environment]))
    if spec.retry is not None:
        props += retries.unit_properties(spec.retry)
    return UnitProperties(unit, tuple(props))
