"""Strict parsing of human quantities."""

import pytest

from supervisor.errors import SjobError
from supervisor.quantities import format_cpu_list, parse_cpu_list, parse_duration


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


@pytest.mark.parametrize(
    ("text", "cpus", "shown"),
    [("0", [0], "0"), ("0-3,6", [0, 1, 2, 3, 6], "0-3,6"), (" 3,1,2 ", [1, 2, 3], "1-3"), ("5-5,0", [0, 5], "0,5")],
)
def test_cpu_lists(text: str, cpus: list[int], shown: str) -> None:
    assert parse_cpu_list(text, "--allowed-cpus", 8192) == cpus
    assert format_cpu_list(cpus) == shown


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "not a list of CPUs"),
        ("a", "not a list of CPUs"),
        ("-1", "not a list of CPUs"),
        ("0,", "not a list of CPUs"),
        ("0-", "not a list of CPUs"),
        ("0..3", "not a list of CPUs"),
        ("3-1", "3-1 is not a range of CPU numbers"),
        ("8192", "8192 is not a range of CPU numbers"),
        ("9" * 40, "not a list of CPUs"),
    ],
)
def test_bad_cpu_lists_say_what_is_accepted(text: str, words: str) -> None:
    with pytest.raises(SjobError) as e:
        parse_cpu_list(text, "--allowed-cpus", 8192)
    assert e.value.message.startswith("--allowed-cpus ")
    assert words in e.value.message
    assert e.value.hint
