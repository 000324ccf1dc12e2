"""Every verb of sjob by name, with the module that declares and does it and a one-line summary (pip's
commands_dict), and sjob's own options: all that `sjob --help` needs, so it imports no verb's module.

A verb's module holds `COMMAND`, a `command.Command` declaring its options, arguments and handler: `sjob VERB`
imports that one module, the completion and man page generators import them all.
"""

from __future__ import annotations

from supervisor import __version__, environment
from supervisor.cli.exitcodes import JOB_STATUS, MEANINGS

TYPE_CHECKING = False  # not typing's: `sjob --help` starts faster without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable

    from supervisor.cli.command import Command


class Verb:
    """A row of the table: no dataclass here, whose import alone would cost `sjob --help` a third of its time."""

    __slots__ = ("module", "summary")

    def __init__(self, module: str, summary: str) -> None:
        self.module = f"supervisor.cli.{module}"
        self.summary = summary

    def command(self) -> Command:
        declared: Command = __import__(self.module, fromlist=["COMMAND"]).COMMAND  # importlib's import costs more
        return declared


COMMANDS = {
    "run": Verb("run", "Start a command as a job; attached (the default), print its output and exit with its status"),
    "logs": Verb("logs", "Print a job's output, stdout and stderr apart, byte for byte; -f follows it to the end"),
    "status": Verb("status", "Show a job: state, command, owner, times, limits, how it ended and what it used"),
    "list": Verb("list", "List your jobs, newest first"),
    "top": Verb("top", "Show your running jobs' CPU, memory, tasks and IO as they run, refreshed in place"),
    "wait": Verb("wait", "Wait until jobs have ended; exit with the last one's status"),
    "stop": Verb("stop", "Stop a job (SIGTERM, then SIGKILL after a grace period) or send it a signal; remove a timer"),
    "timers": Verb("timers", "List your timers (sjob run --on-calendar, --on-active): next and last run, runs"),
    "fn": Verb("fn", "Functions: deploy Python code under a name, call it with your stdin, manage its versions"),
    "token": Verb("token", "Issue, list and revoke tokens for callers the kernel cannot name (admins)"),
    "completion": Verb("completion", "Print the shell completion script for bash, zsh or fish"),
}

SYNOPSIS = "sjob [-h] [--version] [-H [USER@]HOST] COMMAND [ARG]..."
DESCRIPTION = "Run commands as supervised systemd services, with their output kept in journald."


class GlobalOption:
    __slots__ = ("flags", "help", "metavar")

    def __init__(self, flags: tuple[str, ...], help: str, metavar: str | None = None) -> None:
        self.flags = flags
        self.help = help
        self.metavar = metavar  # what its value is called; None for a flag

    @property
    def shown(self) -> str:
        """`-H, --host [USER@]HOST`, as help texts show it."""
        return ", ".join(self.flags) + (f" {self.metavar}" if self.metavar else "")


HOST = GlobalOption(
    ("-H", "--host"),
    "run the command against sjobd on HOST, over ssh, as USER there (default: your ssh login); no stdin or"
    " terminal reaches a job there (run refuses --pty and a piped stdin: give -n)",
    "[USER@]HOST",
)
GLOBAL_OPTIONS = (
    GlobalOption(("-h", "--help"), "show this help; 'sjob COMMAND --help' shows a command's"),
    GlobalOption(("--version",), "print sjob's version"),
    HOST,
)


def version() -> str:
    return f"sjob {__version__}\n"


def overview() -> str:
    """`sjob --help`: the verbs, the environment and the exit statuses."""
    lines = [f"usage: {SYNOPSIS}", "", DESCRIPTION, "", "options:"]
    lines += _rows((o.shown, o.help) for o in GLOBAL_OPTIONS)
    lines += ["", "commands:"]
    lines += _rows((name, verb.summary) for name, verb in COMMANDS.items())
    lines += ["", "environment:"]
    lines += _rows(environment.VARIABLES.items())
    lines += ["", "exit status:"]
    lines += _rows((str(int(code)), meaning) for code, meaning in MEANINGS.items())
    lines += ["", *_wrap(JOB_STATUS + ".", 100), "", "'man sjob' has the whole story."]
    return "\n".join(lines) + "\n"


def _rows(rows: Iterable[tuple[str, str]]) -> list[str]:
    pairs = list(rows)
    width = max(len(name) for name, _ in pairs) + 2
    out = []
    for name, text in pairs:
        wrapped = _wrap(text, 100 - width - 2) or [""]
        out.append(f"  {name:<{width}}{wrapped[0]}")
        out += [" " * (width + 2) + more for more in wrapped[1:]]
    return out


def _wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken between words. Not textwrap's: it imports re, which
    is a quarter of `sjob --help`'s start-up in the test VM."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
