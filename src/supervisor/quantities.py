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
