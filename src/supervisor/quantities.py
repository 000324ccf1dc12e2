"""Human quantities on the command line, parsed strictly: durations now; sizes and percentages as limits come.

Every error names the option and says which forms are accepted, and no input silently means something else:
no negative values, no trailing garbage, no overflow.
"""

from __future__ import annotations

import re

from supervisor.errors import invalid_argument

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|sec|m|min|h|d)?")
_DURATION_USEC = {"us": 1, "ms": 1000, "s": 10**6, "sec": 10**6, "m": 60 * 10**6, "min": 60 * 10**6}
_DURATION_USEC |= {"h": 3600 * 10**6, "d": 86400 * 10**6}
MAX_USEC = 2**63 - 1


def parse_duration(text: str, option: str) -> int:
    """'30s', '1.5m', '500ms', '2h', '90' (seconds) -> microseconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise invalid_argument(
            f"{option} {text[:30]!r}: not a duration",
            hint="write a number with an optional unit: 500ms, 30s (the default unit), 5m, 2h, 1d",
        )
    number, unit = match.groups()
    usec = round(float(number) * _DURATION_USEC[unit or "s"])
    if usec > MAX_USEC:
        raise invalid_argument(f"{option} {text[:30]!r}: too long", hint="give at most a few years")
    return usec


_NUMBER = r"(\d+(?:\.\d+)?)"
_SIZE = re.compile(_NUMBER + r"\s*([KMGTP]?)(?:i?B)?", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}  # as systemd: base 1024
MAX_BYTES = 2**63 - 1
_PERCENT = re.compile(_NUMBER + r"\s*%")
_CPUS = re.compile(_NUMBER)
MAX_CPU_PERCENT = 100 * 1024  # 1024 CPUs
_INTEGER = re.compile(r"\d+")


def parse_size(text: str, option: str, *, zero: bool = False) -> int:
    """'512M', '2G', '1.5G', '4096' (bytes), '10KiB' -> bytes, powers of 1024 as systemd counts them; 0 only
    where `zero` allows it (no swap)."""
    match = _SIZE.fullmatch(text.strip())
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


def parse_cpu(text: str, option: str) -> int:
    """'50%' (of one CPU), '250%', '2' or '1.5' (CPUs) -> percent of one CPU, as systemd's CPUQuota=."""
    text = text.strip()
    if match := _PERCENT.fullmatch(text):
        percent = float(match.group(1))
    elif match := _CPUS.fullmatch(text):
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


_CPU_ITEM = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


def parse_cpu_list(text: str, option: str, limit: int) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]: CPU numbers below `limit`, as systemd's AllowedCPUs= and the kernel's lists."""
    cpus: set[int] = set()
    for item in text.strip().split(","):
        match = _CPU_ITEM.fullmatch(item.strip())
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
    if _INTEGER.fullmatch(text) is None:
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
