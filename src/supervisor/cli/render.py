"""How jobs look: plain text for one job; for many, plain columns, at full width when piped and fitted to the
terminal on one, with the state in colour there.

Durations and sizes are written as systemd writes them (quantities), and everything a request held (argv, cwd,
owner, messages) is escaped before it is printed.
"""

from __future__ import annotations

import os
import shlex
import time

from supervisor import environment
from supervisor.protocol import Job, JobState, Limits, Resources, signal_name
from supervisor.quantities import format_age, format_cpu_list, format_duration, format_size
from supervisor.unitfile import escape

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from typing import TextIO

DOTS = {
    JobState.starting: "◌",
    JobState.running: "●",
    JobState.exited: "○",
    JobState.failed: "×",  # noqa: RUF001
    JobState.stopped: "■",
    JobState.unknown: "?",
}
STYLES = {
    JobState.starting: "yellow",
    JobState.running: "green",
    JobState.exited: "dim",
    JobState.failed: "red",
    JobState.stopped: "yellow",
    JobState.unknown: "magenta",
}
COLUMNS = ("ID", "STATE", "AGE", "OWNER", "COMMAND")


def outcome(job: Job) -> str:
    """The state with how it ended: 'exited (status 0)', 'failed (signal SIGKILL)', 'running'."""
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
            parts.append(f"{name} {format_size(value)}")
    if given.memory_swap_max is not None:
        parts.append(f"swap {format_size(given.memory_swap_max)}")
    if given.tasks_max is not None:
        parts.append(f"tasks {given.tasks_max}")
    if given.timeout_usec is not None:
        parts.append(f"timeout {format_duration(given.timeout_usec)}")
    for name, entries in (
        ("read", given.io_read_bps),
        ("write", given.io_write_bps),
    ):
        parts += [f"{name} {e.device} {format_size(e.rate)}/s" for e in entries or []]
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


def ran_for(job: Job) -> str:
    if job.ended_usec and job.started_usec:
        return f"; ran {format_duration(job.ended_usec - job.started_usec)}"
    return ""


def colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with $NO_COLOR set (no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get(environment.NO_COLOR) and os.environ.get("TERM") != "dumb"


SGR = {"yellow": "33", "green": "32", "dim": "2", "red": "31", "magenta": "35", "bold": "1"}


def job_table(jobs: list[Job], stream: TextIO) -> None:
    """The jobs, one line each, in columns: piped, at full width for grep, awk and cut; on a terminal, the command
    cut short to fit (as systemctl list-units does), and the state in colour unless colour is unwanted."""
    if not jobs:
        stream.write("No jobs. Start one with: sjob run -- COMMAND\n")
        return
    now = round(time.time() * 1e6)
    rows = [
        (
            job.id,
            outcome(job),
            format_age(max(now - job.created_usec, 0)),
            escape(job.user, backslashes=False),
            command(job.argv),
        )
        for job in jobs
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS) - 1)]
    room = _terminal_width(stream) - sum(widths) - 2 * len(widths) if stream.isatty() else None
    paint = colour(stream)
    header = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=False)) + "  " + COLUMNS[-1]
    stream.write((_paint(header, "bold") if paint else header) + "\n")
    for job, row in zip(jobs, rows, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if paint:
            cells[1] = _paint(cells[1], STYLES[job.state])
        stream.write("  ".join(cells) + "  " + (_fit(row[-1], room) if room is not None else row[-1]) + "\n")


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
