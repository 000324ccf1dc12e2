"""How jobs look: plain text for one job; for many, plain columns, at full width when piped and fitted to the
terminal on one, with the state in colour there.

Durations and sizes are written as systemd writes them (quantities), and everything a request held (argv, cwd,
owner, messages) is escaped before it is printed.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence

from supervisor import environment, limitforms
from supervisor.protocol import Attempt, Job, JobState, Limits, Resources, Schedule, Timer, TimerState, signal_name
from supervisor.quantities import format_age, format_duration, format_size
from supervisor.unitfile import escape

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from typing import TextIO

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
COLUMNS = ("ID", "STATE", "AGE", "OWNER", "COMMAND")


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
    how = f"retried on {job.retry.on.value}, {format_duration(job.retry.delay_usec)} apart"
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
    for limit in limitforms.TABLE:
        if (value := getattr(given, limit.field)) is not None:
            parts += limitforms.shown(limit, value)
    return "; ".join(parts)


def usage(resources: Resources | None) -> str:
    if resources is None:
        return ""
    parts = []
    if resources.cpu_usec is not None:
        parts.append(f"CPU {format_duration(resources.cpu_usec)}")
    if resources.memory_peak_bytes is not None:
        parts.append(f"memory peak {format_size(resources.memory_peak_bytes)}")
    if resources.io_read_bytes is not None or resources.io_write_bytes is not None:
        parts.append(
            f"IO read {format_size(resources.io_read_bytes or 0)}, written {format_size(resources.io_write_bytes or 0)}"
        )
    if resources.tasks_peak is not None:
        parts.append(f"tasks peak {resources.tasks_peak}")
    return "; ".join(parts)


def timestamp(usec: int | None, now: float) -> str:
    """'Wed 2026-12-02 17:39:16 UTC; 5min ago', as systemctl status writes it."""
    if not usec:
        return ""
    when = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1e6))
    return f"{when}; {ago(now, usec)}"


def ago(now: float, usec: int) -> str:
    age = round(now * 1e6) - usec
    return format_age(age) + " ago" if age > 0 else "now"


def when(usec: int | None) -> str:
    """A time to come (or past): 'Mon 2025-06-02 02:00:00 UTC; in 5h 3min'; 'never' for None."""
    if not usec:
        return "never"
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1e6)) + f"; {relative(usec)}"


def relative(usec: int, now: float | None = None) -> str:
    """'in 5h 3min' for a time to come, '2min ago' for one past, as systemctl list-timers writes them."""
    left = usec - round((time.time() if now is None else now) * 1e6)
    return f"in {format_age(left)}" if left > 0 else f"{format_age(-left)} ago" if left < 0 else "now"


def schedule(given: Schedule) -> str:
    """A timer's schedule in words: 'Mon..Fri 02:00', 'in 10min after it was made; every 10min'."""
    parts = []
    if given.on_calendar is not None:
        parts.append(given.on_calendar)
    if given.on_active_usec is not None:
        parts.append(f"{format_duration(given.on_active_usec)} after it was made")
    if given.on_unit_active_usec is not None:
        parts.append(f"every {format_duration(given.on_unit_active_usec)} after a run started")
    return "; ".join(parts)


def ran_for(job: Job) -> str:
    if job.ended_usec and job.started_usec:
        return f"; ran {format_duration(job.ended_usec - job.started_usec)}"
    return ""


def colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with $NO_COLOR set (no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get(environment.NO_COLOR) and os.environ.get("TERM") != "dumb"


SGR = {"cyan": "36", "yellow": "33", "green": "32", "dim": "2", "red": "31", "magenta": "35", "bold": "1"}


def job_table(jobs: list[Job], stream: TextIO) -> None:
    """The jobs, one line each, in columns: piped, at full width for grep, awk and cut; on a terminal, the command
    cut short to fit (as systemctl list-units does), and the state in colour unless colour is unwanted."""
    now = round(time.time() * 1e6)
    rows: list[tuple[str, ...]] = [
        (
            job.id,
            outcome(job),
            format_age(max(now - job.created_usec, 0)),
            escape(job.user, backslashes=False),
            command(job.argv),
        )
        for job in jobs
    ]
    styles = [STYLES[job.state] for job in jobs]
    table(COLUMNS, rows, stream, empty="No jobs. Start one with: sjob run -- COMMAND", styles=styles)


TIMER_COLUMNS = ("ID", "STATE", "NEXT", "LAST", "RUNS", "SCHEDULE", "COMMAND")


def timer_table(timers: list[Timer], stream: TextIO) -> None:
    """The timers, as job_table lays out jobs: when each runs next and ran last (as systemctl list-timers says it),
    its runs and its latest run's job, its schedule and command."""
    now = time.time()
    rows: list[tuple[str, ...]] = [
        (
            timer.id,
            timer.state.value,
            relative(timer.next_usec, now) if timer.next_usec else "-",
            relative(timer.last_usec, now) if timer.last_usec else "-",
            f"{timer.runs}" + (f" (last {timer.last_job})" if timer.last_job else ""),
            escape(schedule(timer.schedule), backslashes=False),
            command(timer.argv),
        )
        for timer in timers
    ]
    styles = ["green" if timer.state is TimerState.active else "dim" for timer in timers]
    empty = "No timers. Make one with: sjob run --on-calendar 'Mon..Fri 02:00' -- COMMAND"
    table(TIMER_COLUMNS, rows, stream, empty=empty, styles=styles)


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    stream: TextIO,
    *,
    empty: str | None = None,
    styles: Sequence[str] | None = None,
) -> None:
    """Every table sjob prints: rows under `columns`, one line each, terminal controls in cells escaped; the second
    cell painted in its row's style (`styles`) on a colour terminal; the last column cut to fit a terminal (as
    systemctl list-units does) and whole when piped, for grep, awk and cut. With no rows, `empty` alone if given."""
    if not rows and empty is not None:
        stream.write(empty + "\n")
        return
    rows = [[escape(cell, backslashes=False) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns) - 1)]
    room = _terminal_width(stream) - sum(widths) - 2 * len(widths) if stream.isatty() else None
    paint = colour(stream)
    header = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)) + "  " + columns[-1]
    stream.write((_paint(header, "bold") if paint else header) + "\n")
    for i, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if paint and styles is not None:
            cells[1] = _paint(cells[1], styles[i])
        line = "  ".join(cells) + "  " + (_fit(row[-1], room) if room is not None else row[-1])
        stream.write(line.rstrip() + "\n")


def _paint(text: str, style: str) -> str:
    return f"\x1b[{SGR[style]}m{text}\x1b[0m"


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except OSError:
        return 80


def _fit(text: str, room: int) -> str:
    """`text` cut to `room` terminal cells, with an ellipsis where it was cut (wide characters take two)."""
    import unicodedata  # noqa: PLC0415 - only a terminal needs it

    room = max(room, 10)
    used = 0
    for i, char in enumerate(text):
        used += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used > room - 1 and i < len(text) - 1:
            return text[:i] + "…"
    return text
