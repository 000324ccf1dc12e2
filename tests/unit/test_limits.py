"""Policy limits and sandbox profiles: loading (errors name the file and key) and checking requests."""

import dataclasses
from pathlib import Path

import pytest

from supervisor import limits
from supervisor.errors import ErrorCode, SjobError
from supervisor.policyfile import PolicyError, parse_policy
from supervisor.profiles import ProfileError
from supervisor.profiles import load as load_profiles
from supervisor.protocol import DeviceLimit, Limits

from .fakes import POLICY_DIR, shipped_policy

POLICY, PROFILES = shipped_policy()


def test_shipped_policy_and_profiles_load() -> None:
    assert (POLICY.retention.max_age_usec, POLICY.retention.per_user) == (90 * 86400 * 10**6, 1000)
    assert (POLICY.output.max_bytes, POLICY.output.on_exceed) == (1 << 30, "stop")
    assert POLICY.rules[0].profiles.default == "strict"
    assert set(PROFILES.by_name) >= {"strict", "network"}
    assert "no_network" in PROFILES.get("strict").checks
    assert "no_network" not in PROFILES.get("network").checks


def test_a_request_takes_defaults_and_is_refused_above_a_ceiling() -> None:
    got = limits.check(Limits(cpu_percent=50), POLICY.rules[0].limits)
    assert (got.cpu_percent, got.tasks_max, got.memory_max) == (50, 1024, 2 << 30)
    assert limits.check(None, POLICY.rules[0].limits).cpu_percent == 400  # no default: the ceiling
    with pytest.raises(SjobError) as e:
        limits.check(Limits(memory_max=9 << 30), POLICY.rules[0].limits)
    assert e.value.code is ErrorCode.PermissionDenied
    assert e.value.message == "--memory 9G is above what policy allows you (8G)"


@pytest.mark.parametrize(
    "bad",
    [
        Limits(cpu_weight=0),
        Limits(tasks_max=-1),
        Limits(io_read_bps=[DeviceLimit("../etc/passwd", 1)]),
        Limits(io_read_bps=[DeviceLimit("/dev/../etc/x", 1)]),
        Limits(io_write_iops=[DeviceLimit("/dev/vda", 0)]),
        Limits(io_read_bps=[DeviceLimit("/dev/vda", 1)] * 17),
    ],
)
def test_what_no_cli_would_send_is_refused(bad: Limits) -> None:
    with pytest.raises(SjobError) as e:
        limits.check(bad, POLICY.rules[0].limits)
    assert e.value.code is ErrorCode.InvalidArgument


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[limits.max]\nmemory = '1X'\n", "policy.toml: [limits.max] memory = '1X': not a size"),
        ("[limits.max]\nmemroy = '1G'\n", "policy.toml: [limits.max] unknown key 'memroy'"),
        ("[limits.default]\ntasks = 99\n[limits.max]\ntasks = 10\n", "[limits.default] is above [limits.max]"),
        ("[limits.per_user]\ntimeout = '1h'\n", "[limits.per_user] unknown key 'timeout'"),
        ("[profiles]\ndefault = 'x'\nallowed = ['strict']\n", "default 'x' is not in allowed"),
        ("[oops\n", "policy.toml: "),
        ("surprise = 1\n", "unknown key 'surprise'"),
        ("[records]\nkeep = 'forever'\n", "[records] keep"),
        ("[records]\nkeep_per_user = 0\n", "keep_per_user must be a whole number"),
        ("[records]\nkept = 3\n", "[records] unknown key 'kept'"),
        ("[output]\nmax = 'lots'\n", "[output] max = 'lots'"),
        ("[output]\non_exceed = 'truncate'\n", 'on_exceed must be "stop" or "drop"'),
    ],
)
def test_policy_errors_name_the_file_and_key(text: str, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "/etc/sjob/policy.toml")
    assert words in str(e.value)


def write_profiles(directory: Path, **files: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(text)
    return directory


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[unit]\nUser = 'root'\n", "[unit] User is not a property a profile may set"),
        ("[unit]\nExecStart = '/bin/sh'\n", "[unit] ExecStart is not a property a profile may set"),
        ("[unit]\nPrivateNetwork = 'yes'\n", "PrivateNetwork = 'yes': expected true or false"),
        ("[unit]\nCapabilityBoundingSet = ['CAP_SYS_ADMIN']\n", "expected [] (jobs get no capabilities)"),
        ("[unit]\nRestrictAddressFamilies = ['AF_BOGUS']\n", "address family names"),
        ("[checks]\nno_network = 'sure'\n", "[checks] no_network: known checks are"),
        ("extends = 'nothing'\n", "extends = 'nothing' is not a profile"),
        ("extends = 'bad'\n", "extend each other in a loop"),
        ("colour = 'red'\n", "unknown key 'colour'"),
    ],
)
def test_profile_errors_name_the_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    directory = write_profiles(tmp_path / "profiles", bad=text)
    with pytest.raises(ProfileError) as e:
        load_profiles([directory])
    assert "bad.toml" in str(e.value)
    assert words in str(e.value)


def test_a_site_profile_replaces_the_shipped_one_and_may_extend(tmp_path: Path) -> None:
    site = write_profiles(
        tmp_path / "site", strict="description = 'ours'\n[unit]\nPrivateNetwork = true\n", quiet="extends = 'network'\n"
    )
    profiles = load_profiles([site, POLICY_DIR / "profiles"])
    assert profiles.get("strict").description == "ours"
    assert dict(profiles.get("quiet").properties)["PrivateNetwork"] is False
    with pytest.raises(SjobError) as e:
        profiles.get("nope")
    assert "unknown profile 'nope'" in e.value.message


def test_allowed_cpus_within_the_policy_set_become_a_cpu_mask() -> None:
    policy = parse_policy("[[rules]]\nname = 'all'\nusers = ['*']\n[limits.max]\nallowed-cpus = '0-3,8'\n", "p.toml")
    ceiling = policy.rules[0].limits
    assert limits.check(None, ceiling).allowed_cpus == [0, 1, 2, 3, 8]  # not asked for: the most allowed
    got = limits.check(Limits(allowed_cpus=[1, 8]), ceiling)
    assert ("AllowedCPUs", bytes([0b10, 0b1])) in limits.unit_properties(got)
    with pytest.raises(SjobError) as e:
        limits.check(Limits(allowed_cpus=[3, 4, 5]), ceiling)
    assert e.value.code is ErrorCode.PermissionDenied
    assert e.value.message == "--allowed-cpus 3-5 includes CPUs policy does not allow you (4-5)"
    assert e.value.hint == "choose among CPUs 0-3,8, or ask an administrator"
    for bad in ([], [-1], [8192]):
        with pytest.raises(SjobError) as e:
            limits.check(Limits(allowed_cpus=bad), ceiling)
        assert e.value.code is ErrorCode.InvalidArgument
    with pytest.raises(PolicyError) as p:
        parse_policy("[[rules]]\nname = 'all'\nusers = ['*']\n[limits.max]\nallowed-cpus = '0-x'\n", "p.toml")
    assert "allowed-cpus = '0-x': not a list of CPUs" in str(p.value)


def test_the_table_declares_every_field_of_limits_once() -> None:
    """Issue I: one row per limit drives the options, the policy keys, the checks, the properties and the status
    line; a field of Limits without a row (or a row without a field) would be silently dropped somewhere."""
    from supervisor import limitforms, properties  # noqa: PLC0415

    fields = [f.name for f in dataclasses.fields(Limits)]
    assert sorted(limitforms.BY_FIELD) == sorted(fields)
    assert len(limitforms.TABLE) == len(fields) == len(limitforms.BY_OPTION) == len(limitforms.BY_KEY)
    for limit in limitforms.TABLE:
        assert properties.SIGNATURES[limit.prop] == limit.signature
        assert limit.option.startswith("--")
        assert limit.low <= limit.high


def test_every_limit_reaches_its_property_and_the_status_line() -> None:
    """A job with every limit set: each becomes its systemd property and a part of `sjob status`'s Limits line."""
    from supervisor.cli import render  # noqa: PLC0415

    every = Limits(
        cpu_percent=150, cpu_weight=10, allowed_cpus=[0, 2], memory_max=1 << 30, memory_high=512 << 20,
        memory_swap_max=0, io_weight=20, io_read_bps=[DeviceLimit("/dev/vda", 10 << 20)],
        io_write_bps=[DeviceLimit("/dev/vda", 5 << 20)], io_read_iops=[DeviceLimit("/dev/vda", 100)],
        io_write_iops=[DeviceLimit("/dev/vdb", 50)], tasks_max=64, timeout_usec=90_000_000,
    )  # fmt: skip
    props = dict(limits.unit_properties(every))
    assert props == {
        "CPUQuotaPerSecUSec": 1_500_000, "AllowedCPUs": b"\x05", "MemoryMax": 1 << 30, "MemoryHigh": 512 << 20,
        "MemorySwapMax": 0, "TasksMax": 64, "RuntimeMaxUSec": 90_000_000,
        "IOReadBandwidthMax": [("/dev/vda", 10 << 20)], "IOWriteBandwidthMax": [("/dev/vda", 5 << 20)],
        "IOReadIOPSMax": [("/dev/vda", 100)], "IOWriteIOPSMax": [("/dev/vdb", 50)], "CPUWeight": 10, "IOWeight": 20,
    }  # fmt: skip
    assert render.limits(every) == (
        "CPU 150%; on CPUs 0,2; memory 1.0G; memory high 512.0M; swap 0B; tasks 64; timeout 1min 30s;"
        " read /dev/vda 10.0M/s; write /dev/vda 5.0M/s; read /dev/vda 100 IOPS; write /dev/vdb 50 IOPS;"
        " CPU weight 10; IO weight 20"
    )
