"""The `sjob` command line: one module per verb, rendering in `render`, errors through `die`.

The CLI runs unprivileged and must start fast: it talks to sjobd through the synchronous `client`, never imports
D-Bus, journal or daemon code, and imports rich only when it renders a table.
"""

from __future__ import annotations

import sys

import typer

from supervisor.errors import ErrorCode, SjobError

app = typer.Typer(
    name="sjob",
    help="Run commands as supervised systemd services, with their output kept in journald.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Commands register themselves on `app`; import them for that side effect.
from supervisor.cli import list as _list  # noqa: E402, F401
from supervisor.cli import run as _run  # noqa: E402, F401
from supervisor.cli import status as _status  # noqa: E402, F401

EXIT_CODES = {ErrorCode.ExecutableNotFound: 127, ErrorCode.NotConnected: 69}  # 69 is EX_UNAVAILABLE


def die(error: SjobError) -> None:
    sys.stderr.write(f"sjob: {error.message}\n")
    if error.hint:
        sys.stderr.write(f"hint: {error.hint}\n")
    sys.exit(EXIT_CODES.get(error.code, 1))


def main() -> None:
    try:
        app()
    except SjobError as e:
        die(e)
