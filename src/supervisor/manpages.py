"""The man pages sjob(1) and sjobd(8), and README's reference tables, made from one source: the verbs'
declarations (`cli.commands`, each verb's `COMMAND`), the exit statuses (`cli.exitcodes`), the environment
(`environment`) and sjobd's own argument parser. A unit test fails when README's tables differ from what this makes,
so the three cannot drift.

    python3 -m supervisor.manpages sjob.1            the man page, on stdout (install.sh installs it)
    python3 -m supervisor.manpages sjobd.8
    python3 -m supervisor.manpages --readme README.md   rewrite README's generated tables in place
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from supervisor import __version__, environment
from supervisor.cli.command import Command, Option
from supervisor.cli.commands import COMMANDS, DESCRIPTION, GLOBAL_OPTIONS
from supervisor.cli.exitcodes import JOB_STATUS, MEANINGS

SEE_ALSO_SJOB = "sjobd(8), systemctl(1), journalctl(1), systemd-run(1), systemd.resource-control(5), systemd.exec(5)"
SEE_ALSO_SJOBD = "sjob(1), systemd.service(5), systemd.socket(5), journalctl(1), varlinkctl(1)"

SJOB_DESCRIPTION = """sjob runs your commands as supervised systemd services. sjobd, a small privileged daemon, takes \
requests on a Unix socket, knows the caller by the kernel's word, and starts each job as a transient unit \
sjob-ID.service in sjob.slice, running as the caller, sandboxed by a profile and limited as policy allows. The \
job's output goes to journald, byte for byte, stdout and stderr kept apart, and is read back from there.

Every job is an ordinary unit: systemctl status sjob-ID.service shows it, journalctl -u sjob-ID.service its \
output, journalctl SJOB_JOB_ID=ID its whole story (who started, read and stopped it). Jobs keep running when sjobd \
stops or restarts.

A job id is 8 hex digits, as sjob run -d and sjob list print it; sjob-ID and sjob-ID.service are accepted too. A \
job of someone else's is reported exactly like one that does not exist. Durations are written as systemd writes \
them (500ms, 90s, 10min, 1h 30min, 2d), sizes in powers of 1024 (512M, 1.5G).

With -H [USER@]HOST, the command runs against sjobd on HOST, over ssh, as systemctl -H does: sjob runs ssh -xT \
[-l USER] HOST sjob --bridge ($SJOB_SSH names the ssh command and its options), and on HOST the caller is the \
ssh login user, as for an sjob run in that ssh session; no token is sent there. No file descriptor crosses ssh, \
so the output comes inline (Varlink Follow) and a job there reads nothing: run refuses --pty, and a piped or \
redirected stdin unless -n is given; fn call refuses a piped stdin. The command is looked up in the PATH of the \
job's unit there, not in yours, and runs in / unless --working-directory names a directory there. Ctrl-C stops \
the job, as locally."""

SJOB_FILES = {
    "/run/sjob/io.sjob.Jobs": "sjobd's socket (Varlink; varlinkctl introspect shows the interface)",
    "/etc/sjob/policy.toml": "who may do what, the limits' defaults and ceilings",
    "/etc/sjob/profiles/": "the site's sandbox profiles, over the shipped ones",
}

SJOBD_DESCRIPTION = """sjobd runs sjob's jobs. It is socket-activated by sjobd.socket and reports readiness to \
systemd; it identifies each caller by the kernel's word (SO_PEERCRED) or by a token sjobd issued, decides by \
/etc/sjob/policy.toml what the caller may do, and starts each job as a transient service unit sjob-ID.service in \
sjob.slice through systemd's D-Bus API. Every decision is audited in the journal (journalctl SJOB_AUDIT=1).

Jobs do not depend on sjobd: they keep running and logging when it stops; on start it records the results that \
arrived while it was away and adopts running sjob-*.service units it has no record of.

SIGHUP (systemctl reload sjobd) reads the policy and the profiles again: a good policy applies to the requests \
that follow, a bad one is logged and the policy in force stays. SIGTERM closes the socket, finishes the requests \
in flight and exits; running jobs are not touched."""

SJOBD_FILES = {
    "/etc/sjob/policy.toml": "the policy (the shipped default documents every key)",
    "/etc/sjob/profiles/": "the site's sandbox profiles; a file there replaces a shipped one of the same name",
    "/var/lib/sjob/jobs.sqlite": "the job records",
    "/var/lib/sjob/keys/": "the Ed25519 keys that sign tokens (sjobd --new-key adds one)",
    "/run/sjob/io.sjob.Jobs": "the socket, from sjobd.socket",
}


# --- the command tree ---------------------------------------------------------------------------------------------


def commands() -> Iterator[tuple[Command, str]]:
    """Every command that runs something, with its summary: the verbs, and each subcommand of a group."""
    for name, verb in COMMANDS.items():
        command = verb.command()
        if command.subcommands:
            for child in command.subcommands:
                yield Command(f"{name} {child.name}", child.description, child.options, child.arguments), child.summary
        else:
            yield command, verb.summary


# --- roff ---------------------------------------------------------------------------------------------------------


def roff(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped (options stay copy-pasteable), no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.split("\n\n")]


def _option_tag(option: Option) -> str:
    flags = ", ".join(f"\\fB{roff(f)}\\fR" for f in option.flags)
    return f"{flags} \\fI{roff(option.metavar)}\\fR" if option.metavar else flags


def _definitions(rows: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> list[str]:
    out = []
    for tag, text in rows:
        out += [".TP", tag, roff(text)]
    return out


def _opening(name: str, section: int, volume: str, what: str, synopsis: str, description: str) -> list[str]:
    """A page's title, NAME, SYNOPSIS and DESCRIPTION."""
    lines = [f'.TH {name.upper()} {section} "" "sjob {__version__}" "{volume}"', ".SH NAME", f"{name} \\- {roff(what)}"]
    lines += [".SH SYNOPSIS", synopsis, ".SH DESCRIPTION"]
    for paragraph in _paragraphs(description):
        lines += [".PP", roff(paragraph)]
    return lines


def _closing(files: dict[str, str], see_also: str) -> list[str]:
    lines = [".SH FILES", *_definitions((f"\\fI{roff(path)}\\fR", text) for path, text in files.items())]
    return [*lines, ".SH SEE ALSO", roff(see_also), ""]


def _global_flags(flags: tuple[str, ...], metavar: str | None) -> str:
    shown = ", ".join(f"\\fB{roff(f)}\\fR" for f in flags)
    return shown + (f" \\fI{roff(metavar)}\\fR" if metavar else "")


def sjob_page() -> str:
    what = DESCRIPTION[:1].lower() + DESCRIPTION[1:].rstrip(".")
    synopsis = (
        "\\fBsjob\\fR [\\fB\\-h\\fR] [\\fB\\-\\-version\\fR] [\\fB\\-H\\fR \\fI[USER@]HOST\\fR] \\fICOMMAND\\fR"
        " [\\fIARG\\fR]..."
    )
    lines = _opening("sjob", 1, "User Commands", what, synopsis, SJOB_DESCRIPTION)
    lines += [".SH OPTIONS"]
    lines += _definitions(
        (
            ", ".join(f"\\fB{roff(f)}\\fR" for f in o.flags) + (f" \\fI{roff(o.metavar)}\\fR" if o.metavar else ""),
            o.help,
        )
        for o in GLOBAL_OPTIONS
    )
    lines += [".SH COMMANDS"]
    for command, _ in commands():
        lines += [f'.SS "sjob {command.name}"', ".PP", f"\\fB{roff(command.synopsis())}\\fR"]
        for paragraph in _paragraphs(command.description):
            lines += [".PP", roff(paragraph)]
        group = None
        for option in command.options:
            if option.group != group and option.group:
                lines += [".PP", f"\\fI{roff(option.group.capitalize())}:\\fR"]
            group = option.group
            lines += [".TP", _option_tag(option), roff(option.help)]
    lines += [".SH ENVIRONMENT"]
    lines += _definitions((f"\\fB{name}\\fR", text) for name, text in environment.VARIABLES.items())
    lines += [".SH EXIT STATUS", roff(JOB_STATUS + ".")]
    lines += _definitions((f"\\fB{int(code)}\\fR", text) for code, text in MEANINGS.items())
    return "\n".join(lines + _closing(SJOB_FILES, SEE_ALSO_SJOB))


def sjobd_options() -> list[tuple[str, str]]:
    """sjobd's options as (flags and value, help), from its own parser."""
    from supervisor.daemon import argument_parser  # noqa: PLC0415 - D-Bus and journal libraries: only here

    parser = argument_parser()
    rows = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        value = (
            f" {action.metavar if isinstance(action.metavar, str) else action.dest.upper()}"
            if action.nargs != 0
            else ""
        )
        text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        rows.append((", ".join(action.option_strings) + value, text))
    return rows


def sjobd_page() -> str:
    what = "the sjob daemon: runs jobs as transient systemd service units"
    lines = _opening("sjobd", 8, "System Administration", what, "\\fBsjobd\\fR [\\fIOPTIONS\\fR]", SJOBD_DESCRIPTION)
    lines += [".SH OPTIONS"]
    lines += _definitions((f"\\fB{roff(flags)}\\fR", text) for flags, text in sjobd_options())
    return "\n".join(lines + _closing(SJOBD_FILES, SEE_ALSO_SJOBD))


# --- README ---------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def readme_blocks() -> dict[str, str]:
    """README's generated tables, by the name in their markers."""
    commands_table = ["| command | what it does |", "|---|---|"]
    for command, _ in commands():
        commands_table.append(f"| `{_cell(command.synopsis())}` | {_cell(command.description)} |")
    exits = ["| status | meaning |", "|---|---|"]
    exits += [f"| {int(code)} | {_cell(text)} |" for code, text in MEANINGS.items()]
    exits += ["", _cell(JOB_STATUS) + "."]
    env = ["| variable | what it does |", "|---|---|"]
    env += [f"| `{name}` | {_cell(text)} |" for name, text in environment.VARIABLES.items()]
    sjobd = ["| option | what it does |", "|---|---|"]
    sjobd += [f"| `{_cell(flags)}` | {_cell(text)} |" for flags, text in sjobd_options()]
    return {
        "commands": "\n".join(commands_table),
        "exit-status": "\n".join(exits),
        "environment": "\n".join(env),
        "sjobd-options": "\n".join(sjobd),
    }


_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+)[^>\n]*-->\n)(?P<body>(?:.*\n)*?)(<!-- end generated -->)")


def readme_with_blocks(readme: str) -> str:
    """README with each generated block replaced by what the declarations make now."""
    blocks = readme_blocks()
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + "\n" + m.group(4), readme)


def readme_block_names(readme: str) -> list[str]:
    return [m.group("name") for m in _BLOCK.finditer(readme)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m supervisor.manpages", description=__doc__.split("\n\n")[0])
    parser.add_argument("page", nargs="?", choices=("sjob.1", "sjobd.8"), help="print this man page")
    parser.add_argument("--readme", type=Path, metavar="FILE", help="rewrite FILE's generated tables")
    args = parser.parse_args(argv)
    if args.readme is not None:
        args.readme.write_text(readme_with_blocks(args.readme.read_text()))
    if args.page is not None:
        sys.stdout.write(sjob_page() if args.page == "sjob.1" else sjobd_page())
    return 0


if __name__ == "__main__":
    sys.exit(main())
