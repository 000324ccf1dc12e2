"""Job ids, the wire form of messages, and errors across the wire."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import (
    FRAME,
    MAX_FRAME_DATA,
    AttemptStart,
    Chunk,
    Job,
    JobSpec,
    JobState,
    Output,
    Stream,
    error_from_wire,
    frame,
    from_wire,
    parse_job_id,
    timer_unit_for,
    to_wire,
    unframe,
    unit_for,
)


@pytest.mark.parametrize(
    ("text", "job_id"),
    [("1a2b3c4d", "1a2b3c4d"), ("sjob-1a2b3c4d", "1a2b3c4d"), ("sjob-1a2b3c4d.service", "1a2b3c4d")],
)
def test_job_id_forms(text: str, job_id: str) -> None:
    assert parse_job_id(text) == job_id
    assert unit_for(text) == f"sjob-{job_id}.service"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../x",
        "sshd.service",
        "a@b",
        "x" * 300,
        "1A2B3C4D",
        "1a2b3c4",
        "1a2b3c4d5",
        "ünïcödé",
        "1a2b3c4d\n",
        "sjob-1a2b3c4d.scope",
        "sjob-../../x.service",
        "1a2b 3c4",
    ],
)
def test_malformed_job_ids_are_refused(text: str) -> None:
    with pytest.raises(SjobError) as e:
        parse_job_id(text)
    assert e.value.code is ErrorCode.InvalidArgument
    assert "8 lowercase hex digits" in e.value.message
    assert len(e.value.message) < 200  # a 300-character id is not echoed whole


jobs = st.builds(
    Job,
    id=st.from_regex(r"[0-9a-f]{8}", fullmatch=True),
    unit=st.text(max_size=30),
    state=st.sampled_from(JobState),
    uid=st.integers(0, 2**31),
    user=st.text(max_size=20),
    argv=st.lists(st.text(max_size=20), min_size=1, max_size=5),
    cwd=st.text(max_size=30),
    created_usec=st.integers(0, 2**62),
    started_usec=st.none() | st.integers(0, 2**62),
    ended_usec=st.none() | st.integers(0, 2**62),
    result=st.none() | st.text(max_size=10),
    exit_status=st.none() | st.integers(0, 255),
    signal=st.none() | st.integers(1, 64),
    message=st.none() | st.text(max_size=40),
)


@given(jobs)
def test_job_survives_the_wire(job: Job) -> None:
    assert from_wire(Job, json.loads(json.dumps(to_wire(job)))) == job


def test_replies_may_carry_fields_an_older_client_does_not_know() -> None:
    wire = to_wire(Job("1a2b3c4d", "sjob-1a2b3c4d.service", JobState.running, 1000, "alice", ["true"], "/", 1))
    wire["cpu_usage_nsec"] = 12
    assert from_wire(Job, wire).state is JobState.running


@pytest.mark.parametrize(
    "mangle",
    [
        lambda w: w.pop("id"),
        lambda w: w.update(uid="1000"),
        lambda w: w.update(uid=True),
        lambda w: w.update(state="sleeping"),
        lambda w: w.update(argv="true"),
    ],
)
def test_malformed_replies_are_protocol_errors(mangle) -> None:  # type: ignore[no-untyped-def]
    wire = to_wire(Job("1a2b3c4d", "u", JobState.running, 1000, "alice", ["true"], "/", 1))
    mangle(wire)
    with pytest.raises(SjobError) as e:
        from_wire(Job, wire)
    assert e.value.code is ErrorCode.ProtocolError


@given(st.binary(max_size=4096), st.sampled_from(Stream), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_output_is_binary_safe_as_json_and_as_frames(data: bytes, stream: Stream, seq: int, usec: int) -> None:
    chunk = Chunk(stream, data, usec, seq)
    assert from_wire(Output, to_wire(Output.of(chunk))).chunk() == chunk
    framed = b"x" + frame(chunk) + frame(chunk)[:-1]
    assert unframe(framed, 1) == (chunk, 1 + FRAME.size + len(data))
    assert unframe(framed, 1 + FRAME.size + len(data)) is None  # not all there yet


def test_an_attempt_marker_is_a_frame_without_bytes() -> None:
    framed = (
        frame(Chunk(Stream.stdout, b"one\n", 5, 1))
        + frame(AttemptStart(2, 9))
        + frame(Chunk(Stream.stdout, b"2", 6, 2))
    )
    items, offset = [], 0
    while (found := unframe(framed, offset)) is not None:
        item, offset = found
        items.append(item)
    assert items == [Chunk(Stream.stdout, b"one\n", 5, 1), AttemptStart(2, 9), Chunk(Stream.stdout, b"2", 6, 2)]


def test_ids_of_timers_name_them_too() -> None:
    assert parse_job_id("sjob-1a2b3c4d.timer") == "1a2b3c4d"
    assert timer_unit_for("1a2b3c4d") == "sjob-1a2b3c4d.timer"


def test_a_malformed_frame_is_a_protocol_error() -> None:
    for header in (FRAME.pack(3, 1, 1, 1), FRAME.pack(1, MAX_FRAME_DATA + 1, 1, 1)):
        with pytest.raises(SjobError) as e:
            unframe(header, 0)
        assert e.value.code is ErrorCode.ProtocolError


def test_spec_wire_form_is_what_varlinkctl_users_write() -> None:
    assert to_wire(JobSpec(["/bin/echo", "hi"], "/tmp")) == {
        "argv": ["/bin/echo", "hi"],
        "cwd": "/tmp",
        "environment": None,
        "limits": None,
        "profile": None,
        "terminal": None,
        "retry": None,
    }


def test_errors_come_back_as_raised() -> None:
    e = error_from_wire("io.sjob.Jobs.NoSuchJob", {"message": "no job with id 'x'", "hint": "try sjob list"})
    assert (e.code, e.message, e.hint) == (ErrorCode.NoSuchJob, "no job with id 'x'", "try sjob list")
    unknown = error_from_wire("org.example.Weird", {"x": 1})
    assert unknown.code is ErrorCode.ProtocolError
    assert "org.example.Weird" in unknown.message
    outdated = error_from_wire("org.varlink.service.MethodNotFound", {"method": "Stop"})
    assert outdated.hint is not None
    assert "restart" in outdated.hint


@pytest.mark.parametrize(
    ("state", "exit_status", "signal", "expected"),
    [
        (JobState.exited, 0, None, 0),
        (JobState.failed, 3, None, 3),
        (JobState.failed, None, 9, 137),
        (JobState.failed, None, None, 1),
        (JobState.unknown, None, None, 1),
    ],
)
def test_shell_status(state: JobState, exit_status: int | None, signal: int | None, expected: int) -> None:
    job = Job("1a2b3c4d", "u", state, 0, "root", ["x"], "/", 0, exit_status=exit_status, signal=signal)
    assert job.shell_status == expected
