"""How jobs look on a terminal. Plain text for one job; a rich table (imported only here) for many."""

from __future__ import annotations

import shlex
import sys
import time

from supervisor.logformat import signal_name
from supervisor.protocol import Attempt, Job, JobState, Limits, Resources, Schedule, Timer, TimerState
from supervisor.quantities import format_cpu_list
from supervisor.unitfile import escape

DOTS = {
    JobState.queued: "…",
    JobState.starting: "◌",
    JobState.running: "●",
    JobState.exited: "○",
    JobState.failed: "×",  # noqa: RUF001
    JobState.stopped: "■",
    JobState.unknown: "?",
}
STYLES = {
    JobState.queued: "cyan",
    JobState.starting: "yellow",
    JobState.running: "green",
    JobState.exited: "dim",
    JobState.failed: "red",
    JobState.stopped: "yellow",
    JobState.unknown: "magenta",
}


def outcome(job: Job) -> str:
    """The state with how it ended: 'exited (status 0)', 'failed (signal SIGKILL)', 'running', 'queued (place 2)'."""
    if job.state is JobState.queued and job.position is not None:
        return f"queued (place {job.position})"
    if job.signal is not None:
        return f"{job.state.value} (signal {signal_name(job.signal)})"
    if job.exit_status is not None:
        return f"{job.state.value} (status {job.exit_status})"
    return job.state.value


def command(argv: list[str]) -> str:
    """A job's command line to print: shell-quoted, and with control characters escaped (`\x1b`), so that an
    argument cannot move the cursor, retitle the terminal or hide the rest of the line (issue E)."""
    return escape(shlex.join(argv), backslashes=False)


def status(job: Job) -> str:
    now = time.time()
    lines = [
        f"{DOTS[job.state]} {job.id} - {command(job.argv)}",
        ("State", outcome(job)),
        ("Why", escape(job.message or "", backslashes=False)),
        ("Owner", escape(f"{job.user} (uid {job.uid})", backslashes=False)),
        ("Directory", escape(job.cwd, backslashes=False)),
        ("Unit", job.unit),
        ("Created", timestamp(job.created_usec, now)),
        ("Started", timestamp(job.started_usec, now)),
        ("Ended", timestamp(job.ended_usec, now) + ran_for(job)),
        ("Attempts", attempts(job)),
        ("Timer", f"run of timer {job.timer} (sjob timers)" if job.timer else ""),
        ("Limits", limits(job.limits)),
        ("Sandbox", f"profile {job.profile}" if job.profile else ""),
        ("Used", usage(job.resources)),
        ("Logs", f"sjob logs {job.id}  |  journalctl -u {job.unit}"),
    ]
    out = []
    for line in lines:
        if isinstance(line, str):
            out.append(line)
        elif line[1]:
            out.append(f"{line[0]:>11}: {line[1]}")
    return "\n".join(out) + "\n"


def attempts(job: Job) -> str:
    """A retried job's attempts: how many of how many, and how each that ended did."""
    if job.retry is None:
        return ""
    ended = job.attempts or []
    allowed = job.retry.count + 1
    how = f"retried on {job.retry.on.value}, {duration(job.retry.delay_usec / 1e6)} apart"
    if not job.state.finished and job.state is not JobState.queued:
        how += f"; attempt {len(ended) + 1} {'runs' if job.state is JobState.running else 'starts'}"
    lines = [f"{len(ended)} of at most {allowed} ended ({how})"]
    lines += [f"{'':>13}{a.number}: {attempt_outcome(a)} at {timestamp(a.ended_usec, time.time())}" for a in ended]
    return "\n".join(lines)


def attempt_outcome(attempt: Attempt) -> str:
    if attempt.signal is not None:
        return f"{attempt.result} (signal {signal_name(attempt.signal)})"
    if attempt.exit_status is not None:
        return f"{attempt.result} (status {attempt.exit_status})"
    return attempt.result


def limits(given: Limits | None) -> str:
    if given is None:
        return ""
    parts = []
    if given.cpu_percent is not None:
        parts.append(f"CPU {given.cpu_percent}%")
    if given.allowed_cpus is not None:
        parts.append(f"on CPUs {format_cpu_list(given.allowed_cpus)}")
    for name, value in (("memory", given.memory_max), ("memory high", given.memory_high)):
        if value is not None:
            parts.append(f"{name} {size(value)}")
    if given.memory_swap_max is not None:
        parts.append(f"swap {size(given.memory_swap_max)}")
    if given.tasks_max is not None:
        parts.append(f"tasks {given.tasks_max}")
    if given.timeout_usec is not None:
        parts.append(f"timeout {duration(given.timeout_usec / 1e6)}")
    for name, entries in (
        ("read", given.io_read_bps),
        ("write", given.io_write_bps),
    ):
        parts += [f"{name} {e.device} {size(e.rate)}/s" for e in entries or []]
    for name, entries in (("read", given.io_read_iops), ("write", given.io_write_iops)):
        parts += [f"{name} {e.device} {e.rate} IOPS" for e in entries or []]
    for name, weight in (("CPU weight", given.cpu_weight), ("IO weight", given.io_weight)):
        if weight is not None:
            parts.append(f"{name} {weight}")
    return "; ".join(parts)


def usage(resources: Resources | None) -> str:
    if resources is None:
        return ""
    parts = []
    if resources.cpu_usec is not None:
        parts.append(f"CPU {duration(resources.cpu_usec / 1e6)}")
    if resources.memory_peak_bytes is not None:
        parts.append(f"memory peak {size(resources.memory_peak_bytes)}")
    if resources.io_read_bytes is not None or resources.io_write_bytes is not None:
        parts.append(f"IO read {size(resources.io_read_bytes or 0)}, written {size(resources.io_write_bytes or 0)}")
    if resources.tasks_peak is not None:
        parts.append(f"tasks peak {resources.tasks_peak}")
    return "; ".join(parts)


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{count}B"  # not reached


def timestamp(usec: int | None, now: float) -> str:
    if not usec:
        return ""
    seconds = usec / 1e6
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(seconds)) + f" ({age(now - seconds)} ago)"


def when(usec: int | None) -> str:
    """A time to come (or past): 'Mon 2025-06-02 02:00:00 UTC (in 5h 3min)'; 'never' for None."""
    if not usec:
        return "never"
    seconds = usec / 1e6
    left = seconds - time.time()
    relative = f"in {duration(left)}" if left >= 0 else f"{age(-left)} ago"
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(seconds)) + f" ({relative})"


def schedule(given: Schedule) -> str:
    """A timer's schedule in words: 'Mon..Fri 02:00', 'in 10min after it was made; every 10min'."""
    parts = []
    if given.on_calendar is not None:
        parts.append(given.on_calendar)
    if given.on_active_usec is not None:
        parts.append(f"{duration(given.on_active_usec / 1e6)} after it was made")
    if given.on_unit_active_usec is not None:
        parts.append(f"every {duration(given.on_unit_active_usec / 1e6)} after a run started")
    return "; ".join(parts)


def ran_for(job: Job) -> str:
    if job.ended_usec and job.started_usec:
        return f"; ran {duration((job.ended_usec - job.started_usec) / 1e6)}"
    return ""


def age(seconds: float) -> str:
    return duration(max(seconds, 0.0))


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}min {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}min"
    return f"{hours // 24}d {hours % 24}h"


def print_table(rows: list[list[object]], columns: tuple[str, ...], wrapped: tuple[str, ...], empty: str) -> None:
    """Rows under `columns` (only `wrapped` ones may wrap) as a rich table on stdout; `empty` if there are none."""
    from rich.console import Console  # noqa: PLC0415 - rich costs startup time; only tables need it
    from rich.table import Table  # noqa: PLC0415

    console = Console(file=sys.stdout)
    if not rows:
        console.print(empty, highlight=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column not in wrapped, overflow="ellipsis")
    for row in rows:
        table.add_row(*row)  # type: ignore[arg-type]
    console.print(table, highlight=False)


def job_table(jobs: list[Job]) -> None:
    from rich.text import Text  # noqa: PLC0415 - rich costs startup time; only tables need it

    now = time.time()
    rows: list[list[object]] = []
    for job in jobs:
        # Text, not markup strings: a command like `echo [red]` must print as written.
        rows.append(
            [
                job.id,
                Text(outcome(job), style=STYLES[job.state]),
                age(now - job.created_usec / 1e6),
                Text(escape(job.user, backslashes=False)),
                Text(command(job.argv)),
            ]
        )
    columns = ("ID", "STATE", "AGE", "OWNER", "COMMAND")
    print_table(rows, columns, ("COMMAND",), "No jobs. Start one with: sjob run -- COMMAND")


def timer_table(timers: list[Timer]) -> None:
    from rich.text import Text  # noqa: PLC0415 - rich costs startup time; only tables need it

    now = time.time()
    rows: list[list[object]] = [
        [
            timer.id,
            Text(timer.state.value, style="green" if timer.state is TimerState.active else "dim"),
            Text(f"in {duration(timer.next_usec / 1e6 - now)}" if timer.next_usec else "-"),
            Text(f"{age(now - timer.last_usec / 1e6)} ago" if timer.last_usec else "-"),
            Text(f"{timer.runs}" + (f" (last {timer.last_job})" if timer.last_job else "")),
            Text(escape(schedule(timer.schedule), backslashes=False)),
            Text(command(timer.argv)),
        ]
        for timer in timers
    ]
    columns = ("ID", "STATE", "NEXT", "LAST", "RUNS", "SCHEDULE", "COMMAND")
    empty = "No timers. Make one with: sjob run --on-calendar 'Mon..Fri 02:00' -- COMMAND"
    print_table(rows, columns, ("SCHEDULE", "COMMAND"), empty)
