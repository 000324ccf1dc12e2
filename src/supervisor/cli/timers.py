"""`sjob timers`: your timers (everyone's with --all, for admins), with their next and last run. `sjob run
--on-calendar/--on-active` makes one; `sjob stop ID` removes one."""

import json
import sys
from typing import TYPE_CHECKING, Annotated

from supervisor.client import Client
from supervisor.protocol import Timer, to_wire

if TYPE_CHECKING:
    import typer


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    @app.command()
    def timers(
        as_json: Annotated[bool, typer.Option("--json", help="Print the timers as a JSON array.")] = False,
        everyone: Annotated[bool, typer.Option("--all", help="Every user's timers (root and sjob admins).")] = False,
    ) -> None:
        """List your timers, newest first: when each runs next and ran last, and its runs (each a job)."""
        show(as_json, everyone=everyone)


def show(as_json: bool, *, everyone: bool = False) -> None:
    with Client() as client:
        found = client.timers(everyone=everyone)
    if as_json:
        sys.stdout.write(json.dumps([to_wire(t) for t in found], indent=2) + "\n")
    else:
        from supervisor.cli import render  # noqa: PLC0415 - only needed for human output

        render.timer_table(found)


def removed(timer: Timer) -> str:
    """What `sjob stop` says of a timer it was given."""
    if timer.removed_by is not None:
        return f"timer {timer.id} removed ({timer.message})"
    return f"timer {timer.id} is {timer.state.value}: {timer.message}; nothing to remove"
