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


def test_only_the_owner_and_the_unit_speak_for_a_job() -> None:
    out = OutputRecord(1, "stdout", b"x\n")
    unit = "sjob-1a2b3c4d.service"
    assert logformat.accepts(entry([], uid=1000), out, unit, 1000)
    assert logformat.accepts(entry([], uid=1000, unit=None), out, unit, 1000)  # sender gone before journald read it
    assert not logformat.accepts(entry([], uid=1001), out, unit, 1000)  # another user forging output
    assert not logformat.accepts(entry([], uid=1000, unit="session-1.scope"), out, unit, 1000)  # outside the unit
    assert not logformat.accepts(entry([], uid=1000, unit="sjob-ffffffff.service"), out, unit, 1000)
    exit_record = ExitRecord("success", "exited", 0)
    assert logformat.accepts(entry([], uid=0), exit_record, unit, 1000)
    assert not logformat.accepts(entry([], uid=1000), exit_record, unit, 1000)  # a job cannot forge its own end
