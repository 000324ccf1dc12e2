"""The journald record format: exact reconstruction, trust, and exit records."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
def test_records_concatenate_to_exactly_what_was_written(chunks: list[bytes]) -> None:
    rebuilt = b""
    for seq, chunk in enumerate(chunks, 1):
        record = logformat.parse_record(entry(logformat.output_fields("1a2b3c4d", "cmd", seq, "stdout", chunk)))
        assert isinstance(record, OutputRecord)
        assert record.seq == seq
        rebuilt += record.data
    assert rebuilt == b"".join(chunks)


@pytest.mark.parametrize(
    "chunk",
    [
        b"\n",
        b"\n\n\n",
        b"trailing   \n",
        b"crlf\r\n",
        b"<3>looks like a level\n",
        b"\x00nul\x00",
        b"\xff\xfe",
        b"no newline",
        b"x" * 65536,
    ],
)
def test_tricky_chunks(chunk: bytes) -> None:
    fields = logformat.output_fields("1a2b3c4d", "cmd", 1, "stderr", chunk)
    record = logformat.parse_record(entry(fields))
    assert record == OutputRecord(1, "stderr", chunk)
    assert dict(fields)["PRIORITY"] == b"3"


def test_message_is_a_line_for_journalctl() -> None:
    fields = dict(logformat.output_fields("1a2b3c4d", "echo", 7, "stdout", b"hello\n"))
    assert fields["MESSAGE"] == b"hello"
    assert logformat.F_PARTIAL not in fields
    assert fields["SYSLOG_IDENTIFIER"] == b"echo"


def test_eof_and_exit_records() -> None:
    eof = logformat.parse_record(entry(logformat.eof_fields("1a2b3c4d", "cmd", 42, {"stdout": 1, "stderr": 2})))
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


def test_exit_report_survives_systemd_expansion() -> None:
    argv = logformat.exit_report_command("1a2b3c4d")
    script = argv[2]
    # systemd turns $$ into $ and leaves the shell's positional parameters alone; it fills in ${...} arguments.
    assert "$$1" in script
    assert "${" not in script
    assert argv[4:] == ["${SERVICE_RESULT}", "${EXIT_CODE}", "${EXIT_STATUS}"]
    assert "SJOB_JOB_ID=1a2b3c4d" in script
