"""The unit a job becomes: signatures, identity, and how arguments survive systemd."""

from dbus_fast import Variant

from supervisor import limits, properties
from supervisor.auth import Principal
from supervisor.protocol import DeviceLimit, JobSpec, Limits

from .fakes import exec_entry, shipped_policy

ALICE = Principal(uid=1000, gid=1000, pid=4242, user="alice")
SHIM = properties.ShimCommand("/opt/sjob/bin/sjob-shim")


POLICY, PROFILES = shipped_policy()


def unit(spec: JobSpec, profile: str = "strict") -> properties.UnitProperties:
    job_limits = limits.check(spec.limits, POLICY.rules[0].limits)
    return properties.job_unit(
        "sjob-1a2b3c4d.service", "1a2b3c4d", spec, ALICE, 1000, 1000, SHIM, job_limits, PROFILES.get(profile)
    )


def test_every_property_has_a_signature_that_dbus_accepts() -> None:
    spec = JobSpec(["/bin/echo", "hi"], "/home/alice", ["A=1"])
    for name, signature, value in unit(spec).signed():
        Variant(signature, value)  # raises if value does not fit the signature
        assert properties.SIGNATURES[name] == signature


def test_job_runs_as_the_caller_through_the_shim() -> None:
    u = unit(JobSpec(["/bin/echo", "$HOME", "${PATH}", "%h", "50%"], "/home/alice"))
    assert (u.get("User"), u.get("Group")) == ("1000", "1000")
    assert u.get("Type") == "exec"
    assert u.get("Slice") == "sjob-u1000.slice"
    assert u.get("NoNewPrivileges") is True
    assert u.get("PrivateTmp") is True
    path, argv, flags = exec_entry(u)
    assert path == SHIM.path
    checks = "--check=no_network,no_new_privileges,seccomp,no_capabilities,read_only_system,isolate_processes"
    assert argv == [SHIM.path, checks, "1a2b3c4d", "--", "/bin/echo", "$HOME", "${PATH}", "%h", "50%"]
    assert flags == ["no-env-expand"]  # $VAR reaches the job literally
    _, report, stop_flags = exec_entry(u, "ExecStopPostEx")
    # systemd's SERVICE_RESULT, EXIT_CODE, EXIT_STATUS reach the report in its environment: "${...}" arguments
    # would read back from the unit file as "$${...}" after a daemon-reload.
    assert report == [SHIM.path, "--report", "1a2b3c4d"]
    assert stop_flags == ["privileged", "ignore-failure", "no-env-expand"]


def test_environment_is_passed_as_is() -> None:
    # systemd expands no specifiers in properties set over D-Bus; the integration tests check that it stays so.
    assert unit(JobSpec(["/bin/env"], "/", ["RATIO=50%", "HOME_SPEC=%h"])).get("Environment") == [
        "RATIO=50%",
        "HOME_SPEC=%h",
    ]


def test_description_says_who_ran_what_and_stays_short() -> None:
    assert properties.describe("1a2b3c4d", ALICE, ["/bin/echo", "hello world"]) == (
        "sjob 1a2b3c4d by alice (uid 1000): /bin/echo 'hello world'"
    )
    assert len(properties.describe("1a2b3c4d", ALICE, ["x" * 1000])) == properties.DESCRIPTION_MAX


def test_profiles_confine_and_only_the_working_directory_is_writable() -> None:
    strict = unit(JobSpec(["/bin/true"], "/home/alice/work"))
    assert strict.get("PrivateNetwork") is True
    assert strict.get("ProtectSystem") == "strict"
    assert strict.get("CapabilityBoundingSet") == 0
    assert strict.get("ReadWritePaths") == ["-/home/alice/work"]
    assert ("SystemCallFilter", (False, ["@privileged"])) in strict.properties  # after the allow list
    network = unit(JobSpec(["/bin/true"], "/"), profile="network")
    assert network.get("PrivateNetwork") is False
    assert network.get("RestrictAddressFamilies") == (True, ["AF_UNIX", "AF_INET", "AF_INET6"])
    assert "ReadWritePaths" not in dict(network.properties)  # never all of /
    checks = "--check=no_new_privileges,seccomp,no_capabilities,read_only_system,isolate_processes"
    assert checks in exec_entry(network)[1]


def test_limits_become_properties() -> None:
    spec = JobSpec(
        ["/bin/true"],
        "/",
        limits=Limits(cpu_percent=20, memory_max=512 << 20, io_read_bps=[DeviceLimit("/dev/vda", 1 << 20)]),
    )
    u = unit(spec)
    assert u.get("CPUQuotaPerSecUSec") == 200_000
    assert u.get("MemoryMax") == 512 << 20
    assert u.get("IOReadBandwidthMax") == [("/dev/vda", 1 << 20)]
    assert u.get("TasksMax") == 1024  # the policy's default
    for _, signature, value in u.signed():
        Variant(signature, value)
    caps = properties.slice_unit(1000, POLICY.per_user)
    assert caps.name == "sjob-u1000.slice"
    assert dict(caps.properties) == {"CPUQuotaPerSecUSec": 4_000_000, "MemoryMax": 8 << 30, "TasksMax": 16384}
    for _, signature, value in caps.signed():
        Variant(signature, value)
