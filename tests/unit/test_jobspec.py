"""Validation of job specs: every rejection names the problem."""

import pytest

from supervisor import jobspec
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import JobSpec


def test_valid_spec_is_normalised() -> None:
    spec = jobspec.validate(JobSpec(["/bin/echo", "$HOME", "%h"], "/tmp/../var//tmp/", ["A=1", "B=x=y", "A=2"]))
    assert spec.argv == ["/bin/echo", "$HOME", "%h"]
    assert spec.cwd == "/var/tmp"
    assert spec.environment == ["A=2", "B=x=y"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (JobSpec([], "/"), "empty"),
        (JobSpec([""], "/"), "empty"),
        (JobSpec(["x"] * 5000, "/"), "arguments"),
        (JobSpec(["echo", "a\0b"], "/"), "NUL"),
        (JobSpec(["echo"], "relative/dir"), "absolute"),
        (JobSpec(["echo"], "/\0"), "absolute"),
        (JobSpec(["echo"], "/", ["NOEQUALS"]), "NAME=VALUE"),
        (JobSpec(["echo"], "/", ["1X=1"]), "NAME=VALUE"),
        (JobSpec(["echo"], "/", ["A B=1"]), "NAME=VALUE"),
        (JobSpec(["echo"], "/", ["=1"]), "NAME=VALUE"),
        (JobSpec(["echo"], "/", ["A=\0"]), "NUL"),
        (JobSpec(["echo"], "/", ["A=1"] * 300), "environment"),
        (JobSpec(["echo"], "/", ["A\nB=1"]), "NAME=VALUE"),
        (JobSpec(["echo"], "/", ["LD_PRELOAD=/home/alice/evil.so"]), "LD_PRELOAD is refused"),
        (JobSpec(["echo"], "/", ["LD_LIBRARY_PATH=/tmp"]), "dynamic loader"),
        (JobSpec(["echo"], "/", ["GCONV_PATH=/tmp"]), "GCONV_PATH is refused"),
        (JobSpec(["echo"], "/", ["GLIBC_TUNABLES=x"]), "inside the job"),
    ],
)
def test_invalid_specs(spec: JobSpec, words: str) -> None:
    with pytest.raises(SjobError) as e:
        jobspec.validate(spec)
    assert e.value.code is ErrorCode.InvalidArgument
    assert words in (e.value.message + (e.value.hint or ""))
