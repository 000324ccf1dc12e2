"""`sjob run --queue/--retry/--on-*`, `sjob timers` and `sjob stop` of a queued job or a timer (issue J), as a user
runs them, against a real server (with fakes behind it) on a temp socket."""

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .serverthread import ServerThread
from .test_cli import sjob


def at_most(server: ServerThread, **rule: Any) -> None:
    """Change every rule of the server's policy (max_jobs=1, ...)."""

    def change() -> None:
        policy = server.access.policy
        rules = tuple(dataclasses.replace(r, **rule) for r in policy.rules)
        server.access.policy = dataclasses.replace(policy, rules=rules)

    server.call(change)


def test_retry_shows_every_attempt(server: ServerThread) -> None:
    result = sjob(server, "run", "--retry", "2", "--retry-delay", "1s", "--", "sh", "-c", "echo try; exit 4")
    assert (result.returncode, result.stdout) == (4, b"try\n" * 3)
    (job,) = json.loads(sjob(server, "list", "--json").stdout)
    assert [a["number"] for a in job["attempts"]] == [1, 2, 3]
    lines = [json.loads(line) for line in sjob(server, "logs", "--json", job["id"]).stdout.splitlines()]
    assert [line.get("attempt", line.get("text")) for line in lines] == ["try\n", 2, "try\n", 3, "try\n"]
    human = sjob(server, "status", job["id"]).stdout.decode()
    assert "Attempts: 3 of at most 3 ended (retried on failure, 1s apart)" in human
    assert "3: exit-code (status 4)" in human


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--retry", "x"], b"--retry 'x': give how many times"),
        (["--retry-delay", "5s"], b"--retry-delay and --retry-on go with --retry N"),
        (["--retry", "1", "--retry-on", "sometimes"], b"invalid choice: 'sometimes' (choose from 'failure', 'any')"),
        (["--retry", "1", "--retry-delay", "0.1s"], b"--retry-delay 0.1s is out of range"),
        (["--on-calendar", "daily\nExecStart=/bin/sh"], b"is not a calendar event"),
        (["--on-active", "soon"], b"--on-active 'soon': not a duration"),
        (["--queue", "--on-active", "1h"], b"--queue does not go with a timer"),
    ],
)
def test_bad_scheduling_options_are_clear_errors(server: ServerThread, args: list[str], words: bytes) -> None:
    result = sjob(server, "run", *args, "--", "true")
    assert result.returncode != 0
    assert words in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr
    assert server.units.started == []


def test_queue_waits_shows_its_place_and_stop_removes_it(server: ServerThread) -> None:
    at_most(server, max_jobs=1)
    running = sjob(server, "run", "-d", "--", "sleep", "30").stdout.decode().strip()
    result = sjob(server, "run", "-d", "--queue", "--", "true")
    queued = result.stdout.decode().strip()
    assert result.stderr == f"Queued as job {queued}, place 1 in your queue\n".encode()
    refused = sjob(server, "run", "-d", "--", "true")
    assert refused.returncode == 75  # EX_TEMPFAIL: try again later, or --queue
    assert b"add --queue" in refused.stderr
    assert b"queued (place 1)" in sjob(server, "list").stdout
    assert json.loads(sjob(server, "status", "--json", queued).stdout)["position"] == 1
    removed = sjob(server, "stop", queued)
    assert removed.stdout == f"job {queued} removed from the queue by root\n".encode()
    sjob(server, "stop", "--grace", "0", running)


def test_queue_refuses_input_it_could_not_keep(server: ServerThread, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("x")
    with data.open() as stdin:
        env = {"SJOB_SOCKET": server.socket}
        result = subprocess.run(
            [*sjob_command(), "run", "--queue", "--", "cat"],
            stdin=stdin,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert b"--queue: a queued job reads no input" in result.stderr
    assert b"-n" in result.stderr


def sjob_command() -> list[str]:
    from .test_cli import SJOB  # noqa: PLC0415

    return SJOB


def test_a_timer_is_listed_and_removed_by_stop(server: ServerThread) -> None:
    made = sjob(server, "run", "--on-calendar", "Mon..Fri 02:00", "--", "true")
    assert made.returncode == 0, made.stderr
    timer_id = made.stdout.decode().strip()
    assert made.stderr.startswith(f"Timer: sjob-{timer_id}.timer; next run ".encode())
    (listed,) = json.loads(sjob(server, "timers", "--json").stdout)
    assert (listed["id"], listed["state"], listed["schedule"]["on_calendar"]) == (timer_id, "active", "Mon..Fri 02:00")
    table = sjob(server, "timers").stdout.decode()
    assert timer_id in table
    assert "Mon..Fri 02:00" in table
    removed = sjob(server, "stop", timer_id)
    assert removed.stdout == f"timer {timer_id} removed (removed by root)\n".encode()
    assert json.loads(sjob(server, "timers", "--json").stdout)[0]["state"] == "removed"
    missing = sjob(server, "stop", "0badc0de")
    assert (missing.returncode, missing.stderr.splitlines()[0]) == (66, b"sjob: no job with id '0badc0de'")
