"""What systemd tells us about a job's unit, and what that means for the job. Pure.

`UnitState` is the handful of unit and service properties sjob reads back; the functions here turn it, or the
exit record the unit left in the journal, into a job state with an exit status or a signal.
"""

from __future__ import annotations

import dataclasses

from supervisor.logformat import ExitRecord, QuotaRecord
from supervisor.protocol import JobState, signal_name

# siginfo si_code values systemd reports in ExecMainCode (see waitid(2)).
CLD_EXITED = 1
CLD_KILLED = 2
CLD_DUMPED = 3
KILL = 9

# systemd's own exit statuses for failures while setting up a process (systemd.exec(5), "Process Exit Codes").
SETUP_FAILURES = {
    200: "could not change to the working directory",
    203: "could not execute the command",
    204: "could not set up standard input/output",
    207: "could not set the security context",
    216: "could not set the group",
    217: "could not set the user",
    226: "could not set up the namespace (sandboxing)",
}


RESULTS = {
    "timeout": "timed out",
    "oom-kill": "killed by the out-of-memory killer",
    "watchdog": "watchdog timeout",
    "resources": "systemd could not allocate the resources to start it",
    "start-limit-hit": "started too often",
}


@dataclasses.dataclass(frozen=True, slots=True)
class UnitState:
    name: str
    load_state: str  # loaded, not-found, ...
    active_state: str  # active, activating, deactivating, inactive, failed, ...
    sub_state: str
    result: str  # success, exit-code, signal, core-dump, timeout, oom-kill, resources, ...
    main_pid: int
    exec_main_code: int  # CLD_* or 0 if the main process has not exited
    exec_main_status: int
    exec_main_start_usec: int  # realtime, 0 if never started
    exec_main_exit_usec: int
    user: str
    group: str = ""
    working_directory: str = ""
    exec_start_argv: tuple[str, ...] = ()  # the argv of the first ExecStart= (for sjob units: the shim's)
    # Live accounting while the unit runs; systemd reports "not available" as 2**64-1, which becomes None here.
    cpu_usec: int | None = None
    memory_bytes: int | None = None
    tasks: int | None = None
    invocation_id: str = ""  # the current (or last) run of the unit, 32 hex digits; "" if it never ran
    control_pid: int = 0  # the running ExecStartPre=, ExecStopPost=, ... if any
    # The unit's ExecStopPost= (for sjob units: the exit report) in its current or last run, as (pid, CLD_* code,
    # status): pid 0 if it has not started (or systemd was reloaded since: it does not keep this), code 0 while it
    # runs. None if the unit has no ExecStopPost=, or systemd said something else.
    stop_post: tuple[int, int, int] | None = None

    @property
    def exists(self) -> bool:
        return self.load_state == "loaded"

    @property
    def finished(self) -> bool:
        return self.active_state in ("inactive", "failed")

    @property
    def report_lost(self) -> bool:
        """Settled, and its ExecStopPost= ran and did not exit 0: it was killed or failed. For an sjob unit, its exit
        record will not come (or, sent just before a kill, has come already): there is nothing to wait for. Not
        said of one that never started: systemd may have been reloaded since it ran."""
        if not self.finished or self.stop_post is None:
            return False
        pid, code, status = self.stop_post
        return pid != 0 and code != 0 and (code, status) != (CLD_EXITED, 0)

    @property
    def only_leftovers(self) -> bool:
        """Stopping, with its main process gone and its ExecStopPost= not started: what is left in the cgroup is
        the job's own (systemd starts the ExecStopPost once the cgroup is empty)."""
        return (
            self.sub_state == "stop-sigterm"
            and self.main_pid == 0
            and self.control_pid == 0
            and (self.stop_post is None or self.stop_post[0] == 0)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class TimerUnitState:
    """What systemd says of a timer unit: whether it is there, and when it runs its service next and last did."""

    name: str
    load_state: str
    active_state: str  # active (waiting for its next time), inactive (elapsed, or stopped), ...
    next_usec: int | None = None  # realtime; None: it will not run again
    last_usec: int | None = None  # realtime; None: it never ran

    @property
    def exists(self) -> bool:
        return self.load_state == "loaded"


@dataclasses.dataclass(frozen=True, slots=True)
class UnitUsage:
    """What a unit uses now (its service's accounting properties); None where systemd does not account for it."""

    cpu_usec: int | None = None
    memory_bytes: int | None = None
    tasks: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How a finished job ended, in the terms of protocol.Job."""

    state: JobState
    result: str
    exit_status: int | None
    signal: int | None
    message: str | None

    def __str__(self) -> str:
        """As sjobd logs it: `exited (success, status 0)`, `failed (signal, SIGKILL): why`."""
        how = [self.result]
        if self.exit_status is not None:
            how.append(f"status {self.exit_status}")
        if self.signal is not None:
            how.append(signal_name(self.signal))
        return f"{self.state.value} ({', '.join(how)})" + (f": {self.message}" if self.message else "")


def outcome_of_exit(record: ExitRecord, stopped_by: str | None = None) -> Outcome:
    """Interpret the exit record written by the unit's ExecStopPost; `stopped_by` names who asked for a stop."""
    return _outcome(record.result, record.status, record.signal, stopped_by)


def outcome_of_unit(unit: UnitState, stopped_by: str | None = None) -> Outcome:
    """Interpret a finished unit's properties: for a unit that failed before its main process ran, or one whose
    ExecStopPost (the exit record) systemd could not run."""
    status = unit.exec_main_status if unit.exec_main_code == CLD_EXITED else None
    sig = unit.exec_main_status if unit.exec_main_code in (CLD_KILLED, CLD_DUMPED) else None
    return _outcome(unit.result, status, sig, stopped_by)


def _outcome(result: str, status: int | None, sig: int | None, stopped_by: str | None) -> Outcome:
    if stopped_by is not None:
        message = f"stopped by {stopped_by}" + (f" (killed by signal {signal_name(sig)})" if sig == KILL else "")
        return Outcome(JobState.stopped, result, status, sig, message)
    if result == "success" and sig is not None:
        # systemd counts death by SIGTERM, SIGINT, SIGHUP or SIGPIPE as a clean end (systemctl stop, kill -TERM):
        # the job was stopped, not finished, and never "exit 0".
        return Outcome(JobState.stopped, result, None, sig, f"stopped by signal {signal_name(sig)}")
    state = JobState.exited if result == "success" else JobState.failed
    return Outcome(state, result, status, sig, describe(result, status, sig))


def describe(result: str, status: int | None, sig: int | None) -> str | None:
    """A short human explanation of an abnormal end; None for a plain exit."""
    # systemd's result says more than the signal it used: an OOM kill and a timeout are both "killed".
    if result in RESULTS:
        return RESULTS[result]
    if sig is not None:
        return f"killed by signal {signal_name(sig)}" + (" (core dumped)" if result == "core-dump" else "")
    if status is not None and status in SETUP_FAILURES:
        return f"{SETUP_FAILURES[status]} (systemd exit status {status})"
    return None


def over_quota(outcome: Outcome, quota: QuotaRecord) -> Outcome:
    """The outcome of a job whose output reached the policy's quota: the message says so, whatever else it says."""
    size = f"{quota.max_bytes / 1024**3:g} GiB" if quota.max_bytes >= 1024**3 else f"{quota.max_bytes} bytes"
    if quota.on_exceed == "stop":
        why = f"stopped by sjob: its output reached the quota of {size} ([output] in policy.toml)"
    else:
        why = f"output beyond the quota of {size} was dropped ([output] in policy.toml)"
    return dataclasses.replace(outcome, message=f"{why}; {outcome.message}" if outcome.message else why)


def setup_failure_hint(status: int | None, cwd: str, unit: str) -> str:
    if status == 200:
        return f"check that {cwd} exists and that you may enter it"
    if status == 203:
        return "check that the command exists and is executable"
    return f"'journalctl -u {unit}' shows systemd's own explanation"
