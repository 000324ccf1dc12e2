"""The unit a job becomes: signatures, identity, and how arguments survive systemd."""

from dbus_fast import Variant

from supervisor import properties
from supervisor.auth import Principal
from supervisor.protocol import JobSpec

from .fakes import exec_entry

ALICE = Principal(uid=1000, gid=1000, pid=4242, user="alice")
SHIM = properties.ShimCommand("/opt/sjob/bin/sjob-shim")


def unit(spec: JobSpec) -> properties.UnitProperties:
    return properties.job_unit("sjob-1a2b3c4d.service", "1a2b3c4d", spec, ALICE, 1000, 1000, SHIM)


def test_every_property_has_a_signature_that_dbus_accepts() -> None:
    spec = JobSpec(["/bin/echo", "hi"], "/home/alice", ["A=1"])
    for name, signature, value in unit(spec).signed():
        Variant(signature, value)  # raises if value does not fit the signature
        assert properties.SIGNATURES[name] == signature


def test_job_runs_as_the_caller_through_the_shim() -> None:
    u = unit(JobSpec(["/bin/echo", "$HOME", "${PATH}", "%h", "50%"], "/home/alice"))
    assert (u.get("User"), u.get("Group")) == ("1000", "1000")
    assert u.get("Type") == "exec"
    assert u.get("Slice") == "sjob.slice"
    assert u.get("NoNewPrivileges") is True
    assert u.get("PrivateTmp") is True
    path, argv, flags = exec_entry(u)
    assert path == SHIM.path
    assert argv == [SHIM.path, "1a2b3c4d", "--", "/bin/echo", "$HOME", "${PATH}", "%h", "50%"]
    assert flags == ["no-env-expand"]  # $VAR reaches the job literally
    _, report, stop_flags = exec_entry(u, "ExecStopPostEx")
    assert report == [SHIM.path, "--report", "1a2b3c4d", "${SERVICE_RESULT}", "${EXIT_CODE}", "${EXIT_STATUS}"]
    assert stop_flags == ["privileged", "ignore-failure"]  # and not no-env-expand: systemd must fill these in


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
