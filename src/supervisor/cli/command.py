"""What a verb of sjob is: its options, arguments and handler, declared once in the verb's module as a `Command`.

From that declaration come the parser (argparse, built only for the verb being run, as mkosi builds its own from its
settings table), `sjob VERB --help`, the shell completions and the man page. A new option is one more `Option` in
its verb's `COMMAND`; a new verb is one module and one row of `commands.COMMANDS`.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
from collections.abc import Callable, Sequence

from supervisor.errors import ErrorCode, SjobError
from supervisor.frozen import frozen

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from typing import Any, NoReturn


class Complete(enum.StrEnum):
    """What a shell offers for a value, by TAB."""

    nothing = "nothing"  # free text: no suggestions
    jobs = "jobs"  # the caller's job ids, as sjobd lists them
    running_jobs = "running-jobs"  # the caller's jobs that have not ended
    functions = "functions"  # the functions the caller may call or manage, as sjobd lists them
    profiles = "profiles"  # sandbox profile names
    signals = "signals"  # signal names (TERM, USR1, ...)
    directories = "directories"
    files = "files"
    command = "command"  # a command line: a command from PATH, then that command's own arguments


class Many(enum.StrEnum):
    """How many values an argument takes."""

    one = "one"
    optional = "optional"  # zero or one
    some = "some"  # one or more
    rest = "rest"  # everything after it, options included: a command line


@frozen
class Option:
    flags: tuple[str, ...]  # as --help shows them: ("-d", "--detach")
    help: str
    metavar: str | None = None  # what the value is called; None for a flag, which takes no value
    repeat: bool = False  # may be given again; the values come as a list, in order
    complete: Complete = Complete.nothing
    choices: tuple[str, ...] = ()
    group: str | None = None  # a section of --help and of the man page; the synopsis shows [GROUP]
    required: bool = False

    @property
    def name(self) -> str:
        """The attribute the handler reads: the long flag's name (--no-wait: args.no_wait)."""
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None


@frozen
class Argument:
    name: str  # the attribute the handler reads
    metavar: str
    help: str
    many: Many = Many.one
    complete: Complete = Complete.nothing
    choices: tuple[str, ...] = ()


Handler = Callable[[argparse.Namespace], int | None]


@frozen
class Command:
    """A verb: what --help and the man page say about it, what it takes, and the function that does it. A group
    (`sjob token ...`) has subcommands instead of a handler of its own."""

    name: str
    description: str  # a paragraph or more: `sjob VERB --help`, the man page, README's table
    options: tuple[Option, ...] = ()
    arguments: tuple[Argument, ...] = ()
    handler: Handler | None = None
    summary: str = ""  # one line; top-level verbs have theirs in commands.COMMANDS
    subcommands: tuple[Command, ...] = ()

    def synopsis(self, prefix: str = "sjob") -> str:
        """`sjob stop [--grace DURATION] [-s SIGNAL] [--no-wait] [--json] ID`, options of a group as [GROUP]."""
        words = [f"{prefix} {self.name}"]
        groups: list[str] = []
        for option in self.options:
            if option.group:
                if option.group not in groups:
                    groups.append(option.group)
                    words.append(f"[{option.group.upper()}]")
                continue
            flag = next((f for f in option.flags if not f.startswith("--")), option.flags[0])
            word = f"{flag} {option.metavar}" if option.takes_value else flag
            words.append(word if option.required else f"[{word}]")
        for argument in self.arguments:
            words.append(_argument_synopsis(argument))
        if self.subcommands:
            words.append("{" + "|".join(c.name for c in self.subcommands) + "} ...")
        return " ".join(words)


def _argument_synopsis(argument: Argument) -> str:
    if argument.many is Many.optional:
        return f"[{argument.metavar}]"
    if argument.many is Many.some:
        return f"{argument.metavar}..."
    if argument.many is Many.rest:
        return f"[--] {argument.metavar}"
    return argument.metavar


class UsageError(SjobError):
    """A command line sjob cannot make sense of; its message names the verb (`sjob run: ...`)."""

    def __init__(self, prog: str, message: str, hint: str | None = None) -> None:
        super().__init__(ErrorCode.InvalidArgument, message, hint=hint or f"'{prog} --help' shows what it takes")
        self.prog = prog


class _Formatter(argparse.HelpFormatter):
    """argparse's, but a description keeps its paragraphs (each filled to the terminal's width)."""

    def __init__(self, prog: str) -> None:
        # argparse makes a formatter for every option it adds, and its own asks shutil for the terminal's width:
        # importing shutil (and with it bz2 and lzma) cost every `sjob VERB` ~2 ms natively.
        columns = os.environ.get("COLUMNS", "")
        try:
            width = int(columns) if columns.isdigit() else os.get_terminal_size(sys.stdout.fileno()).columns
        except OSError:
            width = 80
        super().__init__(prog, width=max(width, 40) - 2)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Formatter, self)._fill_text(p, width, indent) for p in text.split("\n\n"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print its usage and exit 2 itself; sjob's errors go through die(), one line and a hint.
        raise UsageError(self.prog, message)


_NARGS: dict[Many, str | None] = {Many.one: None, Many.optional: "?", Many.some: "+", Many.rest: argparse.REMAINDER}


def build_parser(command: Command, prog: str = "sjob") -> argparse.ArgumentParser:
    """The argparse parser of `command` (and of its subcommands), with -h/--help."""
    parser = _Parser(prog=f"{prog} {command.name}", **_texts(command, prog))
    _fill(parser, command, prog)
    return parser


def _texts(command: Command, prefix: str) -> dict[str, Any]:
    return {
        "usage": command.synopsis(prefix),
        "description": command.description,
        "formatter_class": _Formatter,
        "allow_abbrev": False,  # `--det` is a typo, not --detach: a new option must not change what old lines mean
    }


def _fill(parser: argparse.ArgumentParser, command: Command, prog: str) -> None:
    _add_options(parser, command.options)
    for argument in command.arguments:
        parser.add_argument(
            argument.name,
            metavar=argument.metavar,
            help=argument.help,
            nargs=_NARGS[argument.many],
            choices=argument.choices or None,
        )
    if command.subcommands:
        sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True, parser_class=_Parser)
        for child in command.subcommands:
            prefix = f"{prog} {command.name}"
            child_parser = sub.add_parser(
                child.name, prog=f"{prefix} {child.name}", help=child.summary, **_texts(child, prefix)
            )
            _fill(child_parser, child, prefix)
    else:
        parser.set_defaults(handler=command.handler)


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    sections: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if option.group:
            target = sections.get(option.group) or sections.setdefault(
                option.group, parser.add_argument_group(option.group)
            )
        if not option.takes_value:
            target.add_argument(*option.flags, dest=option.name, action="store_true", help=option.help)
        else:
            target.add_argument(
                *option.flags,
                dest=option.name,
                metavar=option.metavar,
                help=option.help,
                action="append" if option.repeat else "store",
                default=[] if option.repeat else None,
                choices=option.choices or None,
                required=option.required,
            )
