"""Strict parsing of human quantities."""

import pytest

from supervisor.errors import SjobError
from supervisor.quantities import parse_duration


@pytest.mark.parametrize(
    ("text", "usec"),
    [
        ("30", 30_000_000),
        ("30s", 30_000_000),
        ("1.5m", 90_000_000),
        ("500ms", 500_000),
        ("2h", 7_200_000_000),
        ("1d", 86_400_000_000),
        ("0", 0),
        ("10 min", 600_000_000),
        ("7us", 7),
    ],
)
def test_durations(text: str, usec: int) -> None:
    assert parse_duration(text, "--grace") == usec


@pytest.mark.parametrize("text", ["", "-1", "-1s", "abc", "10x", "1e3", "5 s s", "1.", ".5", "2**70", "9" * 40])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(SjobError) as e:
        parse_duration(text, "--grace")
    assert e.value.message.startswith("--grace")
    assert e.value.hint
