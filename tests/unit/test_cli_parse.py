"""The command line as sjob parses it, without a server: the verbs' declarations, run's forms, usage errors."""

import argparse
import importlib
from typing import Any

import pytest

from supervisor import __version__, environment
from supervisor.cli import execute, run
from supervisor.cli.command import Command, Many, build_parser
from supervisor.cli.commands import COMMANDS, overview
from supervisor.cli.exitcodes import MEANINGS
from supervisor.protocol import Retry, RetryOn, Schedule

# `sjob run ARGS` -> the command and what run() is asked to do with it.
RUN_FORMS: list[tuple[list[str], list[str], dict[str, Any]]] = [
    (["--", "echo", "hi"], ["echo", "hi"], {}),
    (["echo", "-n", "hi"], ["echo", "-n", "hi"], {}),
    (["-d", "sleep", "1"], ["sleep", "1"], {"detach": True}),
    (["-dq", "--", "true"], ["true"], {"detach": True, "quiet": True}),
    (["--detach", "--quiet", "true"], ["true"], {"detach": True, "quiet": True}),
    (["-E", "A=1", "-E", "B", "env"], ["env"], {"setenv": ["A=1", "B"]}),
    (["-EA=1", "env"], ["env"], {"setenv": ["A=1"]}),
    (["--setenv=A=1", "env"], ["env"], {"setenv": ["A=1"]}),
    (["--working-directory", "/tmp", "pwd"], ["pwd"], {"working_directory": "/tmp"}),
    (["--working-directory=/tmp", "pwd"], ["pwd"], {"working_directory": "/tmp"}),
    (["sh", "-c", "echo --detach"], ["sh", "-c", "echo --detach"], {}),
    (["--", "-d"], ["-d"], {}),
    (["--", "--", "x"], ["--", "x"], {}),
    (["-", "x"], ["-", "x"], {}),
    (["ls", "--help"], ["ls", "--help"], {}),
    (["-q", "ls", "-d", "--", "x"], ["ls", "-d", "--", "x"], {"quiet": True}),
    (["-d", "--json", "true"], ["true"], {"detach": True, "as_json": True}),
    (["--memory", "1G", "--cpu=50%", "-p", "network", "true"], ["true"], {"profile": "network"}),
    (["--profile=strict", "x"], ["x"], {"profile": "strict"}),
    (["-t", "python3", "-q"], ["python3", "-q"], {"pty": True}),
    (["-n", "--", "cat", "-n"], ["cat", "-n"], {"no_stdin": True}),
    (["--pty", "--no-stdin", "sh"], ["sh"], {"pty": True, "no_stdin": True}),
    (["--queue", "-d", "make"], ["make"], {"queue": True, "detach": True}),
    (["--retry", "2", "--", "sh", "--retry"], ["sh", "--retry"], {"retry": Retry(2)}),
    (
        ["--retry=3", "--retry-delay", "10s", "--retry-on", "any", "x"],
        ["x"],
        {"retry": Retry(3, 10_000_000, RetryOn.any)},
    ),
    (["--on-calendar", "Mon..Fri 02:00", "backup"], ["backup"], {"schedule": Schedule("Mon..Fri 02:00")}),
    (
        ["--on-active=5s", "--on-unit-active", "1min", "tick"],
        ["tick"],
        {"schedule": Schedule(None, 5_000_000, 60_000_000)},
    ),
]
LIMIT_FORMS = [
    (["--memory", "1G", "--cpu=50%", "true"], [("--cpu", "50%"), ("--memory", "1G")]),
    (["--memory", "1G", "--memory", "2G", "true"], [("--memory", "2G")]),  # a repeated scalar: the last one wins
    (
        ["--io-read-bps", "/=1M", "--tasks", "5", "--io-read-bps=/dev/vda=2M", "--timeout", "1h 30min", "true"],
        [("--tasks", "5"), ("--timeout", "1h 30min"), ("--io-read-bps", "/=1M"), ("--io-read-bps", "/dev/vda=2M")],
    ),
]


def parsed_run(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[list[str], dict[str, Any]]:
    seen: list[tuple[list[str], dict[str, Any]]] = []

    def fake(command: list[str], **kwargs: Any) -> int:
        seen.append((command, kwargs))
        return 0

    monkeypatch.setattr(run, "run", fake)
    assert execute(["run", *args]) == 0
    (call,) = seen
    return call


@pytest.mark.parametrize(
    ("args", "command", "options"), RUN_FORMS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_run_takes_options_before_the_command_and_leaves_the_rest_to_it(
    monkeypatch: pytest.MonkeyPatch, args: list[str], command: list[str], options: dict[str, Any]
) -> None:
    got_command, got = parsed_run(monkeypatch, args)
    defaults = {"detach": False, "quiet": False, "as_json": False, "setenv": [], "working_directory": None}
    defaults |= {"pty": False, "no_stdin": False, "queue": False, "retry": None, "schedule": None}
    assert got_command == command
    assert {k: v for k, v in got.items() if k != "limits"} == {"profile": None, **defaults, **options}


@pytest.mark.parametrize(("args", "limits"), LIMIT_FORMS)
def test_run_passes_limits_in_the_order_of_their_table(
    monkeypatch: pytest.MonkeyPatch, args: list[str], limits: list[tuple[str, str]]
) -> None:
    assert parsed_run(monkeypatch, args)[1]["limits"] == limits


def test_every_limit_of_the_table_is_an_option_of_run() -> None:
    from supervisor.limitforms import BY_OPTION  # noqa: PLC0415

    assert [o.flags[0] for o in run.LIMITS] == list(BY_OPTION)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_verb_is_one_module_declaring_itself(name: str) -> None:
    module = importlib.import_module(COMMANDS[name].module)
    command: Command = module.COMMAND
    assert command.name == name
    for each in (command, *command.subcommands):
        assert (each.handler is None) == bool(each.subcommands), each.name
        names = [o.name for o in each.options] + [a.name for a in each.arguments]
        assert len(names) == len(set(names)), f"{each.name}: two options or arguments share an attribute"
        flags = [f for o in each.options for f in o.flags]
        assert len(flags) == len(set(flags)), f"{each.name}: a flag is declared twice"
        assert all(a.many is not Many.rest for a in each.arguments[:-1]), "only the last argument can take the rest"
        assert each.description.strip()
        assert all(o.help for o in each.options)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_verb_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        execute([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sjob {name}")
    command = COMMANDS[name].command()
    for option in command.options:
        assert option.flags[-1] in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert execute(["--version"]) == 0
    assert capsys.readouterr().out == f"sjob {__version__}\n"


def test_help_lists_the_verbs_the_environment_and_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert execute(["--help"]) == 0
    out = capsys.readouterr().out
    assert out == overview()
    for name in COMMANDS:
        assert f"\n  {name} " in out
    for variable in (environment.SOCKET, environment.TOKEN, environment.TOKEN_FILE, environment.NO_COLOR):
        assert f"\n  {variable} " in out
    for code in MEANINGS:
        assert f"\n  {int(code)} " in out


def test_no_arguments_is_a_usage_error_with_the_overview(capsys: pytest.CaptureFixture[str]) -> None:
    assert execute([]) == 2
    assert capsys.readouterr().err == overview()


def test_the_parser_is_argparse_built_from_the_declaration() -> None:
    parser = build_parser(COMMANDS["stop"].command())
    assert isinstance(parser, argparse.ArgumentParser)
    namespace = parser.parse_args(["--grace", "10s", "-s", "HUP", "1a2b3c4d"])
    assert (namespace.grace, namespace.signal, namespace.id, namespace.no_wait) == ("10s", "HUP", "1a2b3c4d", False)


def test_a_subcommand_s_usage_error_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert execute(["token", "issue"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sjob token issue: ")
    assert "--subject" in err
    assert "'sjob token issue --help'" in err


def test_fn_call_takes_everything_after_the_name_as_the_function_s_arguments() -> None:
    parser = build_parser(COMMANDS["fn"].command())
    namespace = parser.parse_args(["call", "stats@3", "--json", "-n", "x"])
    assert (namespace.reference, namespace.args) == ("stats@3", ["--json", "-n", "x"])
    namespace = parser.parse_args(["call", "hello"])
    assert (namespace.reference, namespace.args) == ("hello", [])
    namespace = parser.parse_args(["deploy", "--allow", "bob", "--allow", "@staff", "-r", "req.txt", "f", "f.py"])
    assert (namespace.allow, namespace.requirements, namespace.name, namespace.file) == (
        ["bob", "@staff"],
        "req.txt",
        "f",
        "f.py",
    )


def test_a_token_may_be_scoped_to_every_action_of_a_job() -> None:
    """`sjob token issue --scope` knew only the actions of before issue J (no queue, retry, schedule)."""
    from supervisor.cli import token  # noqa: PLC0415
    from supervisor.policy import JOB_ACTIONS  # noqa: PLC0415

    assert set(token.ACTIONS) == {a.value for a in JOB_ACTIONS}
