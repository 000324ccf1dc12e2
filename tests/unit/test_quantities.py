"""Strict parsing of human quantities."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import SjobError
from supervisor.quantities import (
    MAX_BYTES,
    format_age,
    format_cpu_list,
    format_duration,
    format_size,
    parse_cpu_list,
    parse_duration,
    parse_size,
)


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
        # systemd's forms (systemd.time(7)): several parts, long unit names, "m" a minute and "M" a month
        ("1h 30min", 5_400_000_000),
        ("1h30min", 5_400_000_000),
        ("2d", 172_800_000_000),
        ("90s", 90_000_000),
        ("1min 30.5s", 90_500_000),
        ("3 weeks", 1_814_400_000_000),
        ("2 hours 5 minutes", 7_500_000_000),
        ("1M", 2_629_800_000_000),
        ("1y", 31_557_600_000_000),
        ("5msec", 5000),
        ("12\u00b5s", 12),
    ],
)
def test_durations(text: str, usec: int) -> None:
    assert parse_duration(text, "--grace") == usec


@pytest.mark.parametrize(
    "text", ["", "-1", "-1s", "abc", "10x", "1e3", "5 s s", "1.", ".5", "2**70", "9" * 40, "1h30", "1 2", "h", "1hh"]
)
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


@pytest.mark.parametrize(
    ("usec", "shown"),
    [
        (0, "0"),
        (5, "5us"),
        (12_000, "12ms"),
        (1_500_000, "1.500s"),
        (90_000_000, "1min 30s"),
        (3_723_000_000, "1h 2min 3s"),
        (86_400_000_005, "1d"),  # below the millisecond it shows
    ],
)
def test_durations_are_written_as_systemd_writes_them(usec: int, shown: str) -> None:
    assert format_duration(usec) == shown


@pytest.mark.parametrize(
    ("usec", "shown"),
    [
        (0, "now"),
        (5_000_000, "5s"),
        (200_000_000, "3min 20s"),
        (400_000_000, "6min"),
        (7_200_000_000, "2h 0min"),
        (25 * 3_600_000_000, "1 day 1h"),
        (3 * 86_400_000_000, "3 days"),
        (10 * 86_400_000_000, "1 week 3 days"),
        (400 * 86_400_000_000, "1 year 1 month"),
    ],
)
def test_ages_are_written_as_systemctl_status_writes_them(usec: int, shown: str) -> None:
    assert format_age(usec) == shown


@pytest.mark.parametrize(
    ("count", "shown"),
    [(1000, "1000B"), (1536, "1.5K"), (512 << 20, "512.0M"), (int(1.99 * (1 << 30)), "1.9G"), (1 << 62, "4.0E")],
)
def test_sizes_are_written_as_systemd_writes_them(count: int, shown: str) -> None:
    assert format_size(count) == shown


@given(st.integers(min_value=0, max_value=10**15))
def test_a_written_duration_reads_back_to_within_its_accuracy(usec: int) -> None:
    assert abs(parse_duration(format_duration(usec), "--timeout") - usec) < 1000


@given(st.integers(min_value=1, max_value=MAX_BYTES))
def test_a_written_size_reads_back_to_within_its_last_digit(count: int) -> None:
    assert 0 <= count - parse_size(format_size(count), "--memory") <= count // 10 + 1024  # cut, not rounded
