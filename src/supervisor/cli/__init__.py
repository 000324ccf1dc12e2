"""The `sjob` command line: one module per verb (`commands.COMMANDS` names them), errors through `die`.

The CLI runs unprivileged and must start fast: it talks to sjobd through the synchronous `client`, never imports
D-Bus, journal or daemon code, and imports only the verb it runs. Each verb declares its options once
(`command.Command`); argparse parses them, and the completions and the man page are generated from the same
declarations. typer parsed them before, but importing it cost ~50 ms of every call natively, 1-2 times Python's
own start-up in the test VM, while argparse costs a few ms (README, "Dependencies and why").
"""

from __future__ import annotations

import sys

from supervisor.cli.exitcodes import ExitCode, for_error
from supervisor.errors import SjobError


def die(error: SjobError) -> int:
    """Print the error as one line and its hint, and return the exit status it calls for."""
    from supervisor.unitfile import escape  # noqa: PLC0415 - only failures need it

    # Messages can quote what a request held (a path, an argument): never let them drive the terminal. Line by line:
    # a message may quote several (a failed build's last lines).
    prog = getattr(error, "prog", "sjob")
    lines = (escape(line, backslashes=False) for line in error.message.split("\n"))
    sys.stderr.write(f"{prog}: {chr(10).join(lines)}\n")
    if error.hint:
        sys.stderr.write(f"hint: {escape(error.hint, backslashes=False)}\n")
    return for_error(error.code)


def main() -> None:
    sys.exit(execute(sys.argv[1:]))


def execute(args: list[str]) -> int:
    """Run the command line `sjob ARGS...` and return its exit status."""
    try:
        return _execute(args)
    except SjobError as e:
        return die(e)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output has gone (`sjob list | head -1`): end quietly, as a program killed by SIGPIPE.
        import os  # noqa: PLC0415

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE


def _execute(args: list[str]) -> int:
    from supervisor.cli.commands import COMMANDS, overview, version  # noqa: PLC0415

    if not args:
        sys.stderr.write(overview())
        return ExitCode.USAGE
    first = args[0]
    if first in ("-h", "--help"):
        sys.stdout.write(overview())
        return ExitCode.OK
    if first == "--version":
        sys.stdout.write(version())
        return ExitCode.OK
    if first == "--bridge":  # the remote end of `sjob -H` (supervisor.remote); not for people, so not in --help
        from supervisor.bridge import main as bridge  # noqa: PLC0415

        return bridge()
    _import_argparse_untranslated()
    from supervisor.cli.command import UsageError, build_parser  # noqa: PLC0415

    host, args = _host(args)
    if host is not None:
        from supervisor import client  # noqa: PLC0415

        client.use_host(host)
        if not args:
            raise UsageError("sjob", "-H: no command to run there", hint="e.g. sjob -H alice@build1 list")
        first = args[0]
    if first.startswith("-"):
        raise UsageError("sjob", f"unknown option {first[:40]!r}", hint="'sjob --help' shows sjob's own options")
    verb = COMMANDS.get(first)
    if verb is None:
        import difflib  # noqa: PLC0415

        close = difflib.get_close_matches(first, list(COMMANDS), n=1)
        maybe = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError("sjob", f"unknown command {first[:40]!r}{maybe}", hint="'sjob --help' lists the commands")
    namespace = build_parser(verb.command()).parse_args(args[1:])
    status = namespace.handler(namespace)
    return ExitCode.OK if status is None else int(status)


def _import_argparse_untranslated() -> None:
    """Import argparse with a gettext that translates nothing, unless either is imported already. argparse passes
    every message through gettext.gettext, which imports gettext and locale and looks for a catalogue on each
    message; none exists for argparse's messages (Python ships none), so each comes back as it was. That cost
    about 20 ms of `sjob list`'s 430 ms of CPU in the test VM (issue H). Whoever imports gettext later gets the
    real one."""
    if "argparse" in sys.modules or "gettext" in sys.modules:
        return
    untranslated = type(sys)("gettext")
    vars(untranslated).update(
        gettext=lambda message: message,
        ngettext=lambda singular, plural, n: singular if n == 1 else plural,
    )
    sys.modules["gettext"] = untranslated
    try:
        import argparse  # noqa: F401, PLC0415
    finally:
        del sys.modules["gettext"]


def _host(args: list[str]) -> tuple[str | None, list[str]]:
    """The value of a leading -H/--host ([USER@]HOST), and the arguments after it."""
    from supervisor.cli.command import UsageError  # noqa: PLC0415

    first = args[0]
    if first in ("-H", "--host"):
        if len(args) < 2:
            raise UsageError("sjob", f"{first} needs a value: [USER@]HOST")
        return args[1], args[2:]
    if first.startswith("--host="):
        return first.removeprefix("--host="), args[1:]
    if first.startswith("-H") and len(first) > 2:  # -HHOST, as getopt allows
        return first[2:], args[1:]
    return None, args
