"""The `sjob` command line: one module per verb, rendering in `render`, errors through `die`.

The CLI runs unprivileged and must start fast: it talks to sjobd through the synchronous `client`, never imports
D-Bus, journal or daemon code, and imports rich only to render. `sjob run` and `sjob logs` are the hot paths: their
common forms are parsed without importing typer at all (run.parse_fast, logs.parse_fast), which saves ~85 ms of
start-up per call natively and about a second in the test VM; anything unusual (help, a mistake) goes through
typer, which owns the documentation and the error messages.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from supervisor.errors import ErrorCode, SjobError
from supervisor.unitfile import escape

if TYPE_CHECKING:
    import typer

# 69 EX_UNAVAILABLE, 75 EX_TEMPFAIL (a function at its concurrency cap: try again), 65 EX_DATAERR (code that does
# not build)
EXIT_CODES = {
    ErrorCode.ExecutableNotFound: 127,
    ErrorCode.NotConnected: 69,
    ErrorCode.Busy: 75,
    ErrorCode.BuildFailed: 65,
}


def die(error: SjobError) -> int:
    # Messages can quote what a request held (a path, an argument): never let them drive the terminal.
    sys.stderr.write(f"sjob: {escape(error.message, backslashes=False)}\n")
    if error.hint:
        sys.stderr.write(f"hint: {escape(error.hint, backslashes=False)}\n")
    return EXIT_CODES.get(error.code, 1)


def build_app() -> typer.Typer:
    import typer  # noqa: PLC0415 - the fast path of `sjob run` never needs it

    from supervisor.cli import fn, logs, run, status, stop, timers, token  # noqa: PLC0415
    from supervisor.cli import list as list_verb  # noqa: PLC0415

    app = typer.Typer(
        name="sjob",
        help="Run commands as supervised systemd services, with their output kept in journald.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for verb in (run, stop, status, logs, list_verb, timers, token, fn):
        verb.register(app)
    return app


def main() -> None:
    try:
        args = sys.argv[1:]
        # Each fast path imports only its own verb: `sjob logs` has no use for run's limit parsing.
        if args[:1] == ["run"]:
            from supervisor.cli import run  # noqa: PLC0415

            if (fast := run.parse_fast(args[1:])) is not None:
                sys.exit(run.run(fast))
        elif args[:1] == ["logs"]:
            from supervisor.cli import logs  # noqa: PLC0415

            if (fast_logs := logs.parse_fast(args[1:])) is not None:
                sys.exit(logs.show_logs(fast_logs))
        build_app()()
    except SjobError as e:
        sys.exit(die(e))
