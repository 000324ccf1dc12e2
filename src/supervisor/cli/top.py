"""`sjob top`: your running jobs as they run, with CPU %, memory, tasks and IO rates from systemd's accounting
(sjobd's `Usage`), refreshed in place like top(1); keys sort, `q` quits. Once, or piped, it prints one plain table,
as `top -b -n 1` does.

CPU % and the IO rates are differences of two samples of systemd's counters (CPUUsageNSec, IOReadBytes,
IOWriteBytes) over the time between them, taken on sjobd's clock, so they hold over `sjob -H` too. The first view
waits for a second sample (FIRST_INTERVAL). The view is drawn with plain ANSI sequences on the alternate screen,
without curses or rich: `sjob top` starts as fast as `sjob list`, and the terminal is restored on every way out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from supervisor.cli.command import Command, Option
from supervisor.cli.exitcodes import ExitCode
from supervisor.client import Client, remote_host
from supervisor.frozen import frozen
from supervisor.protocol import JobUsage
from supervisor.quantities import format_age, format_size, parse_duration

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

FIRST_INTERVAL = 0.5  # seconds between the first two samples: CPU % needs two
DEFAULT_DELAY = 2_000_000  # usec between refreshes, as top's default of 3 s, a little livelier
MIN_DELAY = 100_000
SORTS = ("cpu", "mem", "tasks", "io", "age")
KEYS = {"c": "cpu", "m": "mem", "t": "tasks", "i": "io", "a": "age"}
COLUMNS = ("ID", "USER", "CPU%", "MEM", "TASKS", "READ/s", "WRITE/s", "AGE", "COMMAND")
HELP_LINE = "keys: c cpu  m memory  t tasks  i io  a age  q quit"


@frozen
class Row:
    """One job in the view: what it uses now, and its rates since the previous sample (None: not known yet)."""

    usage: JobUsage
    cpu_percent: float | None
    read_rate: float | None  # bytes per second
    write_rate: float | None

    @property
    def io_rate(self) -> float | None:
        if self.read_rate is None and self.write_rate is None:
            return None
        return (self.read_rate or 0) + (self.write_rate or 0)

    def sort_value(self, key: str) -> float | None:
        if key == "cpu":
            return self.cpu_percent
        if key == "mem":
            return self.usage.memory_bytes
        if key == "tasks":
            return self.usage.tasks
        if key == "io":
            return self.io_rate
        job = self.usage.job
        return -(job.started_usec or job.created_usec)  # the longest running first

    def to_json(self) -> dict[str, object]:
        u = self.usage
        return {
            "id": u.job.id,
            "user": u.job.user,
            "argv": u.job.argv,
            "started_usec": u.job.started_usec,
            "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 1),
            "cpu_usec": u.cpu_usec,
            "memory_bytes": u.memory_bytes,
            "tasks": u.tasks,
            "io_read_bytes": u.io_read_bytes,
            "io_write_bytes": u.io_write_bytes,
            "io_read_bytes_per_sec": None if self.read_rate is None else round(self.read_rate),
            "io_write_bytes_per_sec": None if self.write_rate is None else round(self.write_rate),
        }


def rows(previous: Iterable[JobUsage], current: Iterable[JobUsage]) -> list[Row]:
    """Each job of `current` with its rates since its sample in `previous` (a job new since then has none)."""
    before = {u.job.id: u for u in previous}
    found = []
    for now in current:
        then = before.get(now.job.id)
        elapsed = (now.sampled_usec - then.sampled_usec) / 1e6 if then is not None else 0.0

        def rate(
            counter: Callable[[JobUsage], int | None],
            now: JobUsage = now,
            then: JobUsage | None = then,
            t: float = elapsed,
        ) -> float | None:
            if then is None or t <= 0 or (a := counter(then)) is None or (b := counter(now)) is None:
                return None
            return max(b - a, 0) / t  # a counter that went back (a restarted cgroup) shows 0, not less

        cpu = rate(lambda u: u.cpu_usec)
        found.append(
            Row(
                now,
                None if cpu is None else cpu / 1e4,
                rate(lambda u: u.io_read_bytes),
                rate(lambda u: u.io_write_bytes),
            )
        )
    return found


def sort_rows(found: list[Row], key: str) -> list[Row]:
    """Largest first; a job whose value is not known yet goes last."""
    known = [r for r in found if r.sort_value(key) is not None]
    unknown = [r for r in found if r.sort_value(key) is None]
    return sorted(known, key=lambda r: r.sort_value(key) or 0, reverse=True) + unknown


def table(found: list[Row], now_usec: int, width: int | None = None) -> list[str]:
    """The rows in columns; with a `width` (a terminal), each line cut to it."""
    from supervisor.cli.render import command  # noqa: PLC0415 - the escaping every printed argv goes through

    cells = [
        (
            r.usage.job.id,
            r.usage.job.user,
            "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}",
            "-" if r.usage.memory_bytes is None else format_size(r.usage.memory_bytes),
            "-" if r.usage.tasks is None else str(r.usage.tasks),
            _per_second(r.read_rate),
            _per_second(r.write_rate),
            format_age(max(now_usec - (r.usage.job.started_usec or r.usage.job.created_usec), 0)),
            command(r.usage.job.argv),
        )
        for r in found
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *cells]) for i in range(len(COLUMNS) - 1)]
    right = {2, 3, 4, 5, 6}  # numbers line up on the right, as in top
    lines = []
    for row in [COLUMNS, *cells]:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        line = "  ".join([*parts, row[-1]])
        lines.append(line[:width] if width is not None else line)
    if not cells:
        lines.append("No running jobs. Start one with: sjob run -d -- COMMAND")
    return lines


def _per_second(value: float | None) -> str:
    return "-" if value is None else format_size(round(value)) + "/s"


def main(args: argparse.Namespace) -> int:
    sort = args.sort or "cpu"
    delay_usec = parse_duration(args.delay, "--delay") if args.delay is not None else DEFAULT_DELAY
    delay = max(delay_usec, MIN_DELAY) / 1e6
    with Client() as client:

        def sample() -> list[JobUsage]:
            return client.usage(everyone=args.all)

        if args.once or args.json or not (sys.stdout.isatty() and sys.stdin.isatty()):
            first = sample()
            time.sleep(FIRST_INTERVAL if first else 0)
            found = sort_rows(rows(first, sample()), sort)
            if args.json:
                sys.stdout.write(json.dumps([r.to_json() for r in found], indent=2) + "\n")
            else:
                sys.stdout.write("".join(line + "\n" for line in table(found, _now_usec())))
            return ExitCode.OK
        from supervisor.cli.screen import Screen  # noqa: PLC0415 - only the live view needs the terminal

        with Screen() as screen:
            return live(screen, sample, sort, delay)


def live(screen: Screen, sample: Callable[[], list[JobUsage]], sort: str, delay: float) -> int:
    """Refresh the view every `delay` seconds until `q`; a sorting key redraws at once."""
    previous = sample()
    screen.draw(_view([], sort, screen.width, sampling=True))
    if screen.wait_key(FIRST_INTERVAL) == "q":
        return ExitCode.OK
    while True:
        current = sample()
        found = rows(previous, current)
        previous = current
        deadline = time.monotonic() + delay
        while True:
            screen.draw(_view(found, sort, screen.width)[: screen.height])
            key = screen.wait_key(max(deadline - time.monotonic(), 0))
            if key == "q":
                return ExitCode.OK
            if key in KEYS:
                sort = KEYS[key]
            elif key is None and time.monotonic() >= deadline:
                break  # time for the next sample; a resize or another key only redraws


def _view(found: list[Row], sort: str, width: int, *, sampling: bool = False) -> list[str]:
    host = remote_host()
    total_cpu = sum(r.cpu_percent or 0 for r in found)
    total_mem = sum(r.usage.memory_bytes or 0 for r in found)
    where = f" on {host}" if host else ""
    head = (
        f"sjob top{where} - {time.strftime('%H:%M:%S')}  {len(found)} running  CPU {total_cpu:.1f}%"
        f"  memory {format_size(total_mem)}  sort: {sort}"
    )
    if sampling:
        return [head[:width], HELP_LINE[:width], "", "sampling..."]
    return [head[:width], HELP_LINE[:width], "", *table(sort_rows(found, sort), _now_usec(), width)]


def _now_usec() -> int:
    return time.time_ns() // 1000


COMMAND = Command(
    name="top",
    description="""Show your running jobs as they run, refreshed in place like top: CPU % (of one CPU; 200 is two
CPUs busy), memory, tasks, and IO read and written per second, from systemd's accounting of each job's unit (what
systemctl status shows), and each job's age and command. Keys while it runs: c, m, t, i and a sort by CPU, memory,
tasks, IO and age; q quits (so does Ctrl-C). Once (--once, --json), or when its output or input is not a terminal,
it samples twice, half a second apart, prints one plain table and exits, as top -b -n 1 does.""",
    options=(
        Option(("-s", "--sort"), "sort by this, largest first (default cpu)", metavar="KEY", choices=SORTS),
        Option(("--delay",), "time between refreshes (default 2s)", metavar="DURATION"),
        Option(("--once",), "print one table and exit"),
        Option(("--json",), "print the jobs and their rates as a JSON array, once"),
        Option(("--all",), "every user's running jobs (root and sjob admins)"),
    ),
    handler=main,
)

if TYPE_CHECKING:
    from supervisor.cli.screen import Screen
