"""peercgroup.inside_job: which cgroup files are a job's (and what cannot be told counts as one)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.peercgroup import inside_job


@pytest.mark.parametrize(
    "text",
    [
        "0::/sjob.slice/sjob-1a2b3c4d.service\n",
        "0::/sjob.slice/sjob-u1000.slice/sjob-1a2b3c4d.service\n",
        "0::/sjob.slice\n",
        "12:pids:/\n1:name=systemd:/sjob.slice/sjob-1a2b3c4d.service\n0::/\n",  # v1 hierarchy disagrees
        "",  # nothing to tell from: fail closed
        "garbage\n",
        "0::relative/path\n",
    ],
)
def test_inside_a_job_or_unknown(text: str) -> None:
    assert inside_job(text)


@pytest.mark.parametrize(
    "text",
    [
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/system.slice/ssh.service\n",
        "0::/\n",
        "0::/sjob.slice.d/x\n",  # a component that only starts like the slice
        "0::/system.slice/not-sjob.slice/x.service\n",
        "9:name=systemd:/\n4:memory:/process_api/63bad85c\n0::/\n",
    ],
)
def test_outside_any_job(text: str) -> None:
    assert not inside_job(text)


_component = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-.@0123456789"), min_size=1, max_size=12)


@given(st.lists(_component, max_size=5), st.lists(_component, max_size=5))
def test_any_sjob_slice_component_is_inside(before: list[str], after: list[str]) -> None:
    path = "/" + "/".join([*before, "sjob.slice", *after])
    assert inside_job(f"0::{path}\n")


@given(st.lists(_component.filter(lambda c: c != "sjob.slice"), max_size=6))
def test_paths_without_the_slice_are_outside(parts: list[str]) -> None:
    assert not inside_job("0::/" + "/".join(parts) + "\n")
