"""The journald record format: exact reconstruction, trust, and exit records."""

import pytest

from supervisor import logformat
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord


def entry(
    fields: list[tuple[str, bytes]], uid: int = 1000, unit: str | None = "sjob-1a2b3c4d.service"
) -> dict[str, bytes]:
    """What journald would hand back: the sent fields plus its trusted ones."""
    result = dict(fields)
    result["_UID"] = str(uid).encode()
    if unit is not None:
        result["_SYSTEMD_UNIT"] = unit.encode()
    return result


def output(seq: int, stream: str, message: bytes, partial: bool = False) -> list[tuple[str, bytes]]:
    """An output record's fields as sjob-shim writes them (test_shim checks the real shim against this module)."""
    fields = [
        ("MESSAGE", message),
        ("SJOB_JOB_ID", b"1a2b3c4d"),
        ("SJOB_STREAM", stream.encode()),
        ("SJOB_SEQ", str(seq).encode()),
    ]
    return [*fields, ("SJOB_PARTIAL", b"1")] if partial else fields


@pytest.mark.parametrize(
    ("message", "partial", "data"),
    [
        (b"", False, b"\n"),
        (b"\n\n", False, b"\n\n\n"),
        (b"trailing   ", False, b"trailing   \n"),
        (b"crlf\r", False, b"crlf\r\n"),
        (b"<3>looks like a level", False, b"<3>looks like a level\n"),
        (b"\x00nul\x00", True, b"\x00nul\x00"),
        (b"\xff\xfe", True, b"\xff\xfe"),
        (b"a\nb", True, b"a\nb"),
    ],
)
def test_a_record_is_its_message_plus_the_newline_it_lost(message: bytes, partial: bool, data: bytes) -> None:
    assert logformat.parse_record(entry(output(7, "stderr", message, partial))) == OutputRecord(7, "stderr", data)


def test_eof_and_exit_records() -> None:
    eof = logformat.parse_record({"SJOB_EVENT": b"eof", "SJOB_RECORDS": b"42", "MESSAGE": b"sjob: end of output"})
    assert eof == EofRecord(42)
    killed = {"SJOB_EVENT": b"exit", "SJOB_RESULT": b"signal", "SJOB_EXIT_CODE": b"killed", "SJOB_EXIT_STATUS": b"TERM"}
    record = logformat.parse_record(killed)
    assert isinstance(record, ExitRecord)
    assert (record.signal, record.status) == (15, None)
    exited = {"SJOB_EVENT": b"exit", "SJOB_RESULT": b"exit-code", "SJOB_EXIT_CODE": b"exited", "SJOB_EXIT_STATUS": b"3"}
    record = logformat.parse_record(exited)
    assert isinstance(record, ExitRecord)
    assert (record.signal, record.status) == (None, 3)
    never_ran = {"SJOB_EVENT": b"exit", "SJOB_RESULT": b"exit-code", "SJOB_EXIT_CODE": b"", "SJOB_EXIT_STATUS": b""}
    assert logformat.parse_record(never_ran) == ExitRecord("exit-code", "", None)


RUN = "0123456789abcdef0123456789abcdef"
OTHER_RUN = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(
    ("claimed", "stamped", "run"),
    [
        (RUN, None, RUN),  # journald left out its stamp (seen on bookworm): the report's own word
        (RUN, OTHER_RUN, RUN),  # the report's word, exact, over the run journald found the unit in
        (None, OTHER_RUN, OTHER_RUN),  # a report from an older shim
        (RUN.upper(), None, ""),  # not systemd's form of an id: ignored
        (RUN.upper(), OTHER_RUN, OTHER_RUN),
        (RUN[:-1], None, ""),
        (RUN + "0", None, ""),
        (RUN[:-1] + "\n", None, ""),
        ("", None, ""),
    ],
)
def test_an_exit_records_run_is_the_one_it_names_else_journalds_stamp(
    claimed: str | None, stamped: str | None, run: str
) -> None:
    fields = {"SJOB_EVENT": b"exit", "SJOB_RESULT": b"exit-code", "SJOB_EXIT_CODE": b"exited", "SJOB_EXIT_STATUS": b"3"}
    if claimed is not None:
        fields["SJOB_INVOCATION"] = claimed.encode()
    if stamped is not None:
        fields["_SYSTEMD_INVOCATION_ID"] = stamped.encode()
    record = logformat.parse_record(entry(list(fields.items()), uid=0))
    assert isinstance(record, ExitRecord)
    assert logformat.run_of(entry(list(fields.items()), uid=0), record) == run


def test_only_an_exit_record_may_name_its_own_run() -> None:
    """Start and output records come from the job's user, who could name any run: journald's stamp only."""
    fields = entry([*output(1, "stdout", b"x"), ("SJOB_INVOCATION", RUN.encode())])
    record = logformat.parse_record(fields)
    assert isinstance(record, OutputRecord)
    assert logformat.run_of(fields, record) == ""


def test_a_timers_run_filter_takes_an_exit_record_that_names_the_run() -> None:
    filter_ = logformat.RecordFilter("sjob-1a2b3c4d.service", 1000, invocation=RUN)
    exit_fields = [("SJOB_EVENT", b"exit"), ("SJOB_RESULT", b"success"), ("SJOB_EXIT_CODE", b"exited")]
    ours = entry([*exit_fields, ("SJOB_EXIT_STATUS", b"0"), ("SJOB_INVOCATION", RUN.encode())], uid=0)
    other = entry([*exit_fields, ("SJOB_EXIT_STATUS", b"0"), ("SJOB_INVOCATION", OTHER_RUN.encode())], uid=0)
    for fields, admitted in ((ours, True), (other, False)):
        record = logformat.parse_record(fields)
        assert record is not None
        assert filter_.admits(fields, record) is admitted


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"MESSAGE": b"plain log line"},
        {"SJOB_STREAM": b"stdin", "SJOB_SEQ": b"1", "MESSAGE": b"x"},
        {"SJOB_STREAM": b"stdout", "SJOB_SEQ": b"-1", "MESSAGE": b"x"},
        {"SJOB_STREAM": b"stdout", "SJOB_SEQ": b"9" * 40, "MESSAGE": b"x"},
        {"SJOB_STREAM": b"stdout", "MESSAGE": b"x"},
        {"SJOB_EVENT": b"eof", "SJOB_RECORDS": b"many"},
        {"SJOB_EVENT": b"exit"},
        {"SJOB_EVENT": b"reboot"},
    ],
)
def test_foreign_or_malformed_entries_are_ignored(fields: dict[str, bytes]) -> None:
    assert logformat.parse_record(fields) is None


def test_only_the_unit_and_its_forwarder_speak_for_a_job() -> None:
    out, start = OutputRecord(1, "stdout", b"x\n"), logformat.StartRecord()
    unit = "sjob-1a2b3c4d.service"

    def sent(uid: int = 1000, pid: int = 77, unit: str | None = unit) -> dict[str, bytes]:
        return {**entry([], uid=uid, unit=unit), "_PID": str(pid).encode()}

    legacy = logformat.RecordFilter(unit, 1000)  # a job of an older sjob: no start record
    assert legacy.admits(sent(), out)
    assert not legacy.admits(sent(unit=None), out)  # unattributed: could be anyone of the owner's
    assert not legacy.admits(sent(uid=1001), out)  # another user forging output
    assert not legacy.admits(sent(unit="session-1.scope"), out)  # the owner, outside the unit
    assert not legacy.admits(sent(unit="sjob-ffffffff.service"), out)  # another job of the owner's

    trusted = logformat.RecordFilter(unit, 1000)
    assert trusted.admits(sent(pid=77), start)
    assert trusted.admits(sent(pid=77), out)
    assert not trusted.admits(sent(pid=78), out)  # the job itself, in the unit as its owner, but not the forwarder
    assert not trusted.admits(sent(pid=78), start)  # nor can it start again

    exit_record = ExitRecord("success", "exited", 0)
    assert trusted.admits(sent(uid=0, pid=90), exit_record)  # the privileged ExecStopPost
    assert not trusted.admits(sent(uid=1000, pid=77), exit_record)  # a job cannot forge its own end
    assert not trusted.admits(sent(uid=0, unit="sjob-ffffffff.service"), exit_record)  # nor root's job another's
    assert not trusted.admits(sent(uid=0, unit=None), exit_record)


def test_each_run_of_a_unit_has_its_own_forwarder() -> None:
    """A retried job's unit runs again, each run (invocation) with a forwarder of its own; a timer's run is read by
    its invocation alone. journald stamps each entry with its run (_SYSTEMD_INVOCATION_ID, from the cgroup)."""
    out, start = OutputRecord(1, "stdout", b"x\n"), logformat.StartRecord()
    unit = "sjob-1a2b3c4d.service"

    def sent(run: str, pid: int, uid: int = 1000) -> dict[str, bytes]:
        return {**entry([], uid=uid, unit=unit), "_PID": str(pid).encode(), "_SYSTEMD_INVOCATION_ID": run.encode()}

    runs = logformat.RecordFilter(unit, 1000)
    assert runs.admits(sent("a" * 32, 77), start)
    assert runs.admits(sent("a" * 32, 77), out)
    assert runs.admits(sent("b" * 32, 88), start)  # the next attempt's forwarder
    assert runs.admits(sent("b" * 32, 88), out)
    assert runs.runs == 2
    assert not runs.admits(sent("b" * 32, 77), out)  # the first forwarder's pid, reused in the second run
    assert not runs.admits(sent("a" * 32, 99), start)  # a second start in a run: the job's forgery
    assert not runs.admits(sent("c" * 32, 55), out)  # a run without a start record
    one = logformat.RecordFilter(unit, 1000, "b" * 32)
    assert not one.admits(sent("a" * 32, 77), start)
    assert one.admits(sent("b" * 32, 88), start)
    assert not one.admits(sent("a" * 32, 0, uid=0), ExitRecord("success", "exited", 0))
    assert one.admits(sent("b" * 32, 0, uid=0), ExitRecord("success", "exited", 0))
