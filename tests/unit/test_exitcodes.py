"""One table of exit statuses: every failure has one, and --help, the man page and README show the same numbers."""

import re
from pathlib import Path

import pytest

from supervisor import manpages
from supervisor.cli.commands import overview
from supervisor.cli.exitcodes import FOR_ERROR, MEANINGS, ExitCode, for_error, of_job
from supervisor.errors import ErrorCode
from supervisor.protocol import Job, JobState

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_error_has_an_exit_status_and_every_status_a_meaning() -> None:
    assert set(FOR_ERROR) == set(ErrorCode)
    assert set(MEANINGS) == set(ExitCode)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.InvalidArgument, 2),  # as argparse, and every GNU tool, for a bad command line
        (ErrorCode.NoSuchJob, 66),  # EX_NOINPUT
        (ErrorCode.NotConnected, 69),  # EX_UNAVAILABLE
        (ErrorCode.TooManyJobs, 75),  # EX_TEMPFAIL
        (ErrorCode.ProtocolError, 76),  # EX_PROTOCOL
        (ErrorCode.PermissionDenied, 77),  # EX_NOPERM
        (ErrorCode.ExecutableNotFound, 127),  # the shell's
        (ErrorCode.SystemdError, 1),
    ],
)
def test_the_numbers(code: ErrorCode, status: int) -> None:
    assert for_error(code) == status


def job(**fields: object) -> Job:
    return Job("1a2b3c4d", "sjob-1a2b3c4d.service", 0, "root", [], "/", 1, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"state": JobState.exited, "exit_status": 0, "result": "success"}, 0),
        ({"state": JobState.failed, "exit_status": 3, "result": "exit-code"}, 3),
        ({"state": JobState.failed, "signal": 9, "result": "signal"}, 137),
        ({"state": JobState.failed, "signal": 15, "result": "timeout"}, 124),  # ran over --timeout, as timeout(1)
        ({"state": JobState.stopped, "signal": 9, "result": "timeout"}, 137),  # a stop that took too long
        ({"state": JobState.stopped, "signal": 15, "result": "success"}, 143),
    ],
)
def test_a_job_passes_its_status_through(fields: dict[str, object], status: int) -> None:
    state = fields.pop("state")
    assert of_job(Job("1a2b3c4d", "u", state, 0, "root", [], "/", 1, **fields)) == status  # type: ignore[arg-type]


def shown(text: str) -> dict[int, str]:
    """status -> meaning as a text lists them: a row per status, its number first."""
    return {int(m[1]): " ".join(m[2].split()) for m in re.finditer(r"^\s*\|?\s*(\d+)\s*\|?\s+(.+)$", text, re.M)}


def test_help_man_page_and_readme_show_the_same_table() -> None:
    wanted = {int(code): meaning for code, meaning in MEANINGS.items()}
    help_text = overview().split("exit status:\n")[1].split("\n\n")[0]
    help_rows = shown(re.sub(r"\n\s{7,}", " ", help_text))  # continuation lines join their row
    assert help_rows == wanted
    page = manpages.sjob_page().split(".SH EXIT STATUS")[1].split(".SH")[0]
    man_rows = dict(re.findall(r"\.TP\n\\fB(\d+)\\fR\n(.*)", page))
    assert {int(k): v.replace("\\-", "-") for k, v in man_rows.items()} == wanted
    readme = README.read_text().split("<!-- generated: exit-status")[1].split("<!-- end generated -->")[0]
    readme_rows = {int(k): v.replace("\\|", "|") for k, v in re.findall(r"^\| (\d+) \| (.*) \|$", readme, re.M)}
    assert readme_rows == wanted
