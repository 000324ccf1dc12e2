"""Hostile requests against the transient unit file (issue E, section 1).

`reread` is a small model of what systemd does with a transient unit's file on daemon-reload: each property is
written as `unit_write_setting` writes it (only `%` escaped; path lists as `"a" "b"`), and read back as its
config parser reads it (lines end at LF, CR or NUL; a trailing backslash joins the next line; blanks around a value
are stripped; list words are unquoted with backslash escapes). The VM suite checks the same against real systemd
(tests/integration/test_unit_file.py); this one tries many more requests.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import jobspec, limits, properties, unitfile
from supervisor.auth import Principal
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import JobSpec

from .fakes import shipped_policy

POLICY, PROFILES = shipped_policy()
SHIM = properties.ShimCommand("/opt/sjob/bin/sjob-shim")
ALICE = Principal(uid=1000, gid=1000, pid=1, user="alice")
# What an attacker reaches for: line ends, continuations, quotes, specifiers, section headers, terminal escapes.
PIECES = [*"\n\r\0\\\"' \t%$[]=+#;/ab\x1b\x7f\x85", "\u2028", "\u2029", "\ufeff", "é", "[Service]", "ExecStop=+"]
HOSTILE = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


def write_and_read_back(value: str, kind: unitfile.Kind) -> list[str]:
    """The values systemd's parser gets back for one property written with `value` (one element for a line)."""
    escaped = value.replace("%", "%%")
    text = f"Key={escaped}\n" if kind is unitfile.Kind.line else f'Key="{escaped}"\n'
    lines, current = [], ""
    for piece in re.split(r"[\n\r\0]", text):
        if piece.endswith("\\"):
            current += piece[:-1] + " "
            continue
        lines.append(current + piece)
        current = ""
    first = lines[0].partition("=")[2].strip(" \t").replace("%%", "%")
    if kind is unitfile.Kind.line:
        return [first] + [line for line in lines[1:] if line.strip()]
    return _unquote_words(first) + [line for line in lines[1:] if line.strip()]


def _unquote_words(text: str) -> list[str]:
    words: list[str] = []
    word: str | None = None  # None: between words
    quoted, i = False, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            word = (word or "") + text[i + 1]
            i += 2
            continue
        if char == '"':
            quoted, word = not quoted, word or ""
        elif char in " \t" and not quoted:
            if word is not None:
                words.append(word)
            word = None
        else:
            word = (word or "") + char
        i += 1
    return words if word is None else [*words, word]


@settings(max_examples=500)
@given(st.one_of(HOSTILE, st.text(max_size=40)), st.sampled_from(list(unitfile.Kind)))
def test_a_value_without_problems_reads_back_as_itself(value: str, kind: unitfile.Kind) -> None:
    if unitfile.problem(value, kind) is None:
        assert write_and_read_back(value, kind) == [value]


@settings(max_examples=300)
@given(st.lists(HOSTILE, min_size=1, max_size=4), HOSTILE, st.lists(HOSTILE, max_size=3))
def test_every_hostile_request_is_refused_or_reads_back_exactly(argv: list[str], cwd: str, env: list[str]) -> None:
    spec = JobSpec(["/bin/sh", *argv], "/srv/" + cwd, [f"V{i}={v}" for i, v in enumerate(env)])
    refused: SjobError | None = None
    try:
        spec = jobspec.validate(spec)
    except SjobError as e:
        refused = e
    if refused is not None:
        assert refused.code is ErrorCode.InvalidArgument
        return
    job_limits = limits.check(None, POLICY.rules[0].limits)
    # Building the unit must not trip the unit-file guard: what jobspec accepts, every property keeps.
    strict = PROFILES.get("strict")
    unit = properties.job_unit("sjob-1a2b3c4d.service", "1a2b3c4d", spec, ALICE, 1000, 1000, SHIM, job_limits, strict)
    for key, value in unit.properties:
        if key in properties.ESCAPED_BY_SYSTEMD:
            continue
        if isinstance(value, str):
            assert write_and_read_back(value, unitfile.Kind.line) == [value], key
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            for item in value:
                assert write_and_read_back(item, unitfile.Kind.word) == [item], key


def test_the_issue_s_argument_stays_in_the_description() -> None:
    argv = ["/bin/true", 'x\n[Service]\nExecStop=+/bin/sh -c "id >/run/pwned"\n#']
    description = properties.describe("1a2b3c4d", ALICE, argv)
    assert write_and_read_back(description, unitfile.Kind.line) == [description]
    assert "\n" not in description
    assert "\\n[Service]\\nExecStop=+" in description


@pytest.mark.parametrize(
    ("cwd", "words"),
    [
        ("/tmp/a\nb", "control"),
        ("/tmp/a\rb", "control"),
        ("/tmp/\x1b[2J", "control"),
        ("/tmp/a\u2028b", "non-printable"),
        ('/tmp/x" "/etc', "double quote"),
        ("/tmp/x\\", "backslash"),
        ("/tmp/x ", "blanks"),
        ("/tmp/x\\", "--working-directory"),
        ("/tmp/\ud800", "Unicode"),
    ],
)
def test_working_directories_systemd_would_change_are_refused(cwd: str, words: str) -> None:
    with pytest.raises(SjobError) as e:
        jobspec.validate(JobSpec(["/bin/true"], cwd))
    assert words in e.value.message + (e.value.hint or "")
    assert "\n" not in e.value.message
    assert "\x1b" not in e.value.message


@pytest.mark.parametrize(
    "name", ["SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS", "MONITOR_EXIT_CODE", "INVOCATION_ID", "SJOB_JOB_ID"]
)
def test_names_systemd_sets_for_the_unit_are_refused(name: str) -> None:
    with pytest.raises(SjobError) as e:
        jobspec.validate(JobSpec(["/bin/true"], "/", [f"{name}=success"]))
    assert f"{name} is refused" in e.value.message
    assert "sjob run -- env" in (e.value.hint or "")


def test_names_of_the_caller_s_own_session_stay_allowed() -> None:
    spec = jobspec.validate(JobSpec(["/bin/true"], "/", ["PATH=/opt/bin", "HOME=/x", "TERM=xterm", "LANG=C"]))
    assert spec.environment == ["PATH=/opt/bin", "HOME=/x", "TERM=xterm", "LANG=C"]


def test_lone_surrogates_are_refused_with_a_message_not_a_crash() -> None:
    for spec in (JobSpec(["/bin/echo", "\udc80"], "/"), JobSpec(["/bin/true"], "/", ["A=\ud800"])):
        with pytest.raises(SjobError) as e:
            jobspec.validate(spec)
        assert "Unicode" in e.value.message


def test_the_guard_refuses_what_escapes_every_check() -> None:
    with pytest.raises(SjobError, match="cannot be written into a unit file"):
        properties.UnitProperties("sjob-1a2b3c4d.service", (("WorkingDirectory", "/tmp/a\nExecStop=+/bin/id"),))
    with pytest.raises(SjobError, match="double quote"):
        properties.UnitProperties("sjob-1a2b3c4d.service", (("ReadWritePaths", ['-/tmp/x" "/etc']),))


def test_escape_writes_what_is_not_printable_as_escapes() -> None:
    escaped = unitfile.escape("a\nb\\c\x1b\u2028\U0001f600é\udc80")
    assert escaped == "a\\nb\\\\c\\x1b\\u2028\U0001f600é\\udc80"
    assert escaped.isprintable()
