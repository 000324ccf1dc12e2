"""What sjob prints on a terminal cannot be steered by what a job's request held (issue E, section 5)."""

import io
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cli import die, render
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import Job, JobState

HOSTILE = st.text(alphabet=st.sampled_from([*"\x1b\x07\x9b\r\n\b\x00\\ab[]0;", "\u202e", "\u2028"]), max_size=30)


def unsafe(text: str) -> bool:
    """Whether `text` holds a character that makes a terminal do something rather than show it."""
    return any(not c.isprintable() and c != "\n" for c in text)


# No deadline: the first example imports rich (lazily, as the CLI does), which took over hypothesis's 200 ms on a
# loaded machine.
@settings(deadline=None)
@given(st.lists(HOSTILE, min_size=1, max_size=3), HOSTILE, HOSTILE, HOSTILE)
def test_status_and_list_escape_argv_cwd_user_and_message(argv: list[str], cwd: str, user: str, why: str) -> None:
    job = Job("1a2b3c4d", "sjob-1a2b3c4d.service", JobState.failed, 1000, user, argv, "/" + cwd, 1, message=why)
    assert not unsafe(render.status(job))
    assert not unsafe(render.command(argv))


def test_an_error_message_cannot_drive_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    die(SjobError(ErrorCode.InvalidArgument, "bad \x1b]0;owned\x07 path", hint="try \x1b[2J"))
    assert err.getvalue() == "sjob: bad \\x1b]0;owned\\x07 path\nhint: try \\x1b[2J\n"
    # Escapes sjobd already wrote stay readable: backslashes are not doubled.
    err.truncate(0)
    err.seek(0)
    die(SjobError(ErrorCode.InvalidArgument, "the working directory '/tmp/a\\nb' has a control character (\\n)"))
    assert err.getvalue() == "sjob: the working directory '/tmp/a\\nb' has a control character (\\n)\n"
