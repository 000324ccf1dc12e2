"""Human quantities, parsed strictly and written as systemd writes them: durations, sizes, CPU amounts and lists.

Every error names the option and says which forms are accepted, and no input silently means something else:
no negative values, no trailing garbage, no overflow. Durations take systemd's forms (`1h 30min`, `2d`, `500ms`,
`90`: seconds), and durations and sizes are shown the way `systemctl status` shows them (`1min 30s`, `512.0M`), so
what sjob prints can be given back to it, or to systemd.
"""

from __future__ import annotations

import re

from supervisor.errors import invalid_argument

USEC_PER_SEC = 10**6
USEC_PER_MINUTE = 60 * USEC_PER_SEC
USEC_PER_HOUR = 60 * USEC_PER_MINUTE
USEC_PER_DAY = 24 * USEC_PER_HOUR
USEC_PER_WEEK = 7 * USEC_PER_DAY
USEC_PER_MONTH = 2_629_800 * USEC_PER_SEC  # systemd's: a twelfth of its year
USEC_PER_YEAR = 31_557_600 * USEC_PER_SEC  # systemd's: 365.25 days
# The units of systemd's parse_sec() (time-util.c), case-sensitive as there: "m" is a minute, "M" a month.
_DURATION_UNITS = {
    **dict.fromkeys(("us", "usec", "\u00b5s", "\u03bcs"), 1),
    **dict.fromkeys(("ms", "msec"), 1000),
    **dict.fromkeys(("s", "sec", "second", "seconds"), USEC_PER_SEC),
    **dict.fromkeys(("m", "min", "minute", "minutes"), USEC_PER_MINUTE),
    **dict.fromkeys(("h", "hr", "hour", "hours"), USEC_PER_HOUR),
    **dict.fromkeys(("d", "day", "days"), USEC_PER_DAY),
    **dict.fromkeys(("w", "week", "weeks"), USEC_PER_WEEK),
    **dict.fromkeys(("M", "month", "months"), USEC_PER_MONTH),
    **dict.fromkeys(("y", "year", "years"), USEC_PER_YEAR),
}
# Patterns are compiled at their first use (re keeps them): compiled at import, they cost every sjob call start-up
# time, ~2.5 ms natively and ten times that in the test VM, for options most calls never give.
_DURATION_PART = r"\s*(\d+(?:\.\d+)?)\s*([^\W\d_]*)"
MAX_USEC = 2**63 - 1
_DURATION_HINT = (
    "write a number with a unit, as systemd does: 500ms, 90s, 10min, 1h 30min, 2d (a bare number is seconds)"
)


def parse_duration(text: str, option: str) -> int:
    """systemd's time spans -> microseconds: '90' (seconds), '30s', '1.5m', '500ms', '1h 30min', '1h30min', '2d',
    '3 weeks'. A bare number is seconds, as for systemd; in a span of several parts each part names its unit."""
    parts = []
    position, stripped = 0, text.rstrip()
    part = re.compile(_DURATION_PART)
    while position < len(stripped):
        match = part.match(stripped, position)
        if match is None or match.end() == position or match.group(2) not in ("", *_DURATION_UNITS):
            raise invalid_argument(f"{option} {text[:30]!r}: not a duration", hint=_DURATION_HINT)
        parts.append(match.groups())
        position = match.end()
    if not parts or (len(parts) > 1 and any(not unit for _, unit in parts)):
        raise invalid_argument(f"{option} {text[:30]!r}: not a duration", hint=_DURATION_HINT)
    if any(len(number) > 20 for number, _ in parts):
        raise invalid_argument(f"{option} {text[:30]!r}: too long", hint="give at most a few years")
    usec = sum(round(float(number) * _DURATION_UNITS[unit or "s"]) for number, unit in parts)
    if usec > MAX_USEC:
        raise invalid_argument(f"{option} {text[:30]!r}: too long", hint="give at most a few years")
    return usec


_TIMESPAN_UNITS = (
    ("y", USEC_PER_YEAR),
    ("month", USEC_PER_MONTH),
    ("w", USEC_PER_WEEK),
    ("d", USEC_PER_DAY),
    ("h", USEC_PER_HOUR),
    ("min", USEC_PER_MINUTE),
    ("s", USEC_PER_SEC),
    ("ms", 1000),
    ("us", 1),
)


def format_duration(usec: int, accuracy: int = 1000) -> str:
    """A time span as systemd's format_timespan() writes it: '1min 30s', '2h 5min', '1.500s', '12ms' (to
    `accuracy` microseconds, a millisecond by default); parse_duration reads it back."""
    if usec <= 0:
        return "0"
    parts: list[str] = []
    for suffix, unit in _TIMESPAN_UNITS:
        if usec <= 0 or (usec < accuracy and parts):
            break
        if usec < unit:
            continue
        whole, rest = divmod(usec, unit)
        if usec < USEC_PER_MINUTE and rest > 0:
            # Under a minute, the rest goes behind a point ("1.500s") to the given accuracy, as systemd does.
            digits = len(str(unit)) - 1
            for _ in range(len(str(accuracy)) - 1):
                rest //= 10
                digits -= 1
            if digits > 0:
                parts.append(f"{whole}.{rest:0{digits}d}{suffix}")
                break
        parts.append(f"{whole}{suffix}")
        usec = rest
    return " ".join(parts)


def format_age(usec: int) -> str:
    """How long ago, as systemd's format_timestamp_relative() writes it without its 'ago': '5s', '3min 20s',
    '2h 5min', '1 day 3h', '3 weeks 2 days'."""
    if usec >= USEC_PER_YEAR:
        return _plural(usec // USEC_PER_YEAR, "year") + " " + _plural(usec % USEC_PER_YEAR // USEC_PER_MONTH, "month")
    if usec >= USEC_PER_MONTH:
        return _plural(usec // USEC_PER_MONTH, "month") + " " + _plural(usec % USEC_PER_MONTH // USEC_PER_DAY, "day")
    if usec >= USEC_PER_WEEK:
        return _plural(usec // USEC_PER_WEEK, "week") + " " + _plural(usec % USEC_PER_WEEK // USEC_PER_DAY, "day")
    if usec >= 2 * USEC_PER_DAY:
        return f"{usec // USEC_PER_DAY} days"
    if usec >= 25 * USEC_PER_HOUR:
        return f"1 day {(usec - USEC_PER_DAY) // USEC_PER_HOUR}h"
    if usec >= 6 * USEC_PER_HOUR:
        return f"{usec // USEC_PER_HOUR}h"
    if usec >= USEC_PER_HOUR:
        return f"{usec // USEC_PER_HOUR}h {usec % USEC_PER_HOUR // USEC_PER_MINUTE}min"
    if usec >= 5 * USEC_PER_MINUTE:
        return f"{usec // USEC_PER_MINUTE}min"
    if usec >= USEC_PER_MINUTE:
        return f"{usec // USEC_PER_MINUTE}min {usec % USEC_PER_MINUTE // USEC_PER_SEC}s"
    if usec >= USEC_PER_SEC:
        return f"{usec // USEC_PER_SEC}s"
    if usec >= 1000:
        return f"{usec // 1000}ms"
    return f"{usec}us" if usec > 0 else "now"


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


_NUMBER = r"(\d+(?:\.\d+)?)"
_SIZE = r"(?i)" + _NUMBER + r"\s*([KMGTPE]?)(?:i?B)?"
_SIZE_FACTOR = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5, "e": 1024**6}  # base 1024
MAX_BYTES = 2**63 - 1
_PERCENT = _NUMBER + r"\s*%"
_CPUS = _NUMBER
MAX_CPU_PERCENT = 100 * 1024  # 1024 CPUs
_INTEGER = r"\d+"


def parse_size(text: str, option: str, *, zero: bool = False) -> int:
    """'512M', '2G', '1.5G', '4096' (bytes), '10KiB' -> bytes, powers of 1024 as systemd counts them; 0 only
    where `zero` allows it (no swap)."""
    match = re.fullmatch(_SIZE, text.strip())
    if match is None:
        raise invalid_argument(
            f"{option} {text[:30]!r}: not a size",
            hint="write a number with an optional unit K, M, G or T (powers of 1024): 512M, 2G, 1.5G, 4096",
        )
    number, unit = match.groups()
    value = round(float(number) * _SIZE_FACTOR[unit.lower()])
    if value > MAX_BYTES:
        raise invalid_argument(f"{option} {text[:30]!r}: too large", hint="give at most a few petabytes")
    if value == 0 and not zero:
        raise invalid_argument(f"{option} {text[:30]!r}: must be more than zero", hint="for example 512M")
    return value


_SIZE_UNITS = (("E", 1024**6), ("P", 1024**5), ("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def format_size(count: int) -> str:
    """Bytes as systemd's format_bytes() writes them (`systemctl status`): '512.0M', '1.5G', '1000B', with one
    digit after the point, cut rather than rounded; parse_size reads them back."""
    for i, (suffix, factor) in enumerate(_SIZE_UNITS):
        if count >= factor:
            if i < len(_SIZE_UNITS) - 1:
                tenth = count // _SIZE_UNITS[i + 1][1] * 10 // 1024 % 10
            else:
                tenth = count * 10 // factor % 10
            return f"{count // factor}.{tenth}{suffix}"
    return f"{count}B"


def parse_cpu(text: str, option: str) -> int:
    """'50%' (of one CPU), '250%', '2' or '1.5' (CPUs) -> percent of one CPU, as systemd's CPUQuota=."""
    text = text.strip()
    if match := re.fullmatch(_PERCENT, text):
        percent = float(match.group(1))
    elif match := re.fullmatch(_CPUS, text):
        percent = float(match.group(1)) * 100
    else:
        raise invalid_argument(
            f"{option} {text[:30]!r}: not a CPU amount",
            hint="write a percentage of one CPU (50%, 250%) or a number of CPUs (2, 1.5)",
        )
    if not 1 <= percent <= MAX_CPU_PERCENT:
        raise invalid_argument(
            f"{option} {text[:30]!r}: out of range", hint=f"give 1% to {MAX_CPU_PERCENT}% (that is, up to 1024 CPUs)"
        )
    return round(percent)


_CPU_ITEM = r"(\d{1,5})(?:-(\d{1,5}))?"


def parse_cpu_list(text: str, option: str, limit: int) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]: CPU numbers below `limit`, as systemd's AllowedCPUs= and the kernel's lists."""
    cpus: set[int] = set()
    for item in text.strip().split(","):
        match = re.fullmatch(_CPU_ITEM, item.strip())
        if match is None:
            raise invalid_argument(
                f"{option} {text[:30]!r}: not a list of CPUs",
                hint="write CPU numbers and ranges separated by commas: 0, 0-3, 0-3,6 ('nproc --all' counts them)",
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last or last >= limit:
            raise invalid_argument(
                f"{option} {text[:30]!r}: {item.strip()} is not a range of CPU numbers",
                hint=f"a range runs from low to high, CPUs are numbered from 0 (below {limit})",
            )
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6'."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_integer(text: str, option: str, low: int, high: int, what: str = "a whole number") -> int:
    """A plain decimal integer in [low, high]."""
    text = text.strip()
    if re.fullmatch(_INTEGER, text) is None:
        raise invalid_argument(f"{option} {text[:30]!r}: not {what}", hint=f"give {what} from {low} to {high}")
    value = int(text[:40]) if len(text) <= 40 else high + 1
    if not low <= value <= high:
        raise invalid_argument(f"{option} {text[:30]!r}: out of range", hint=f"give {what} from {low} to {high}")
    return value


def parse_device_limit(text: str, option: str, *, per_second: str) -> tuple[str, int]:
    """'DEVICE=RATE' for the IO limits: ('/dev/vda', 10485760) from '/dev/vda=10M'. The device may be given as
    any path on it (such as /): resolving it is the caller's business. With per_second='bytes' the rate is a
    size (10M); with per_second='operations' a whole number (1000)."""
    device, sep, rate = text.rpartition("=")
    if not sep or not device or not rate:
        raise invalid_argument(
            f"{option} {text[:60]!r}: expected DEVICE=RATE",
            hint=f"for example {option} /=10M (a path on the device, or the device itself: /dev/vda=10M)",
        )
    if per_second == "bytes":
        return device, parse_size(rate, option)
    return device, parse_integer(rate, option, 1, 2**63 - 1, "a number of operations per second")
