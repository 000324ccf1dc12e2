"""`sjob stop ID`: stop a job (SIGTERM, then SIGKILL after a grace period), or send it a signal; a queued job
leaves its queue. The id of a timer removes the timer."""

import sys
import time
from typing import TYPE_CHECKING, Annotated

from supervisor.cli.timers import removed
from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.logformat import signal_name
from supervisor.protocol import REMOVED_FROM_QUEUE, parse_job_id, parse_signal
from supervisor.quantities import parse_duration

STOP_POLL = 0.2  # seconds between looks at a stopping job

if TYPE_CHECKING:
    import typer


def register(app: "typer.Typer") -> None:
    # Annotations are evaluated here, where typer is imported: no `from __future__ import annotations` above.
    import typer  # noqa: PLC0415

    @app.command()
    def stop(
        job_id: Annotated[str, typer.Argument(metavar="ID", help="The job to stop.")],
        grace: Annotated[
            str | None,
            typer.Option(
                "--grace",
                metavar="DURATION",
                help="Time between SIGTERM and SIGKILL (default and at most 90s, as systemd).",
            ),
        ] = None,
        signal: Annotated[
            str | None,
            typer.Option("--signal", "-s", metavar="SIGNAL", help="Only send SIGNAL (e.g. HUP, USR1) to the job."),
        ] = None,
        no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the stop is requested.")] = False,
    ) -> None:
        """Stop a job: SIGTERM to all its processes, SIGKILL to what is left after the grace period."""
        raise typer.Exit(stop_job(job_id, grace, signal, wait=not no_wait))


def stop_job(job_id: str, grace: str | None, signal: str | None, *, wait: bool) -> int:
    from supervisor.cli import render  # noqa: PLC0415

    job_id = parse_job_id(job_id)
    grace_usec = parse_duration(grace, "--grace") if grace is not None else None
    signo = parse_signal(signal) if signal is not None else None  # a bad name fails here, with the same words
    with Client() as client:
        try:
            job = client.stop(job_id, signal=signal, grace_usec=grace_usec)
        except SjobError as e:
            if e.code is not ErrorCode.NoSuchJob or signal is not None or grace is not None:
                raise
            # Not a job of ours: perhaps a timer (one id space). If not that either, the same words as for a job.
            sys.stdout.write(removed(client.remove_timer(job_id)) + "\n")
            return 0
        if job.result == REMOVED_FROM_QUEUE:  # a queued job: it left the queue, never having run
            sys.stdout.write(f"job {job.id} {job.message}\n")
            return 0
        if job.state.finished:
            sys.stdout.write(f"job {job.id} has already ended ({render.outcome(job)}); nothing to stop\n")
            return 0
        if signo is not None:
            sys.stdout.write(f"sent {signal_name(signo)} to job {job.id}\n")
            return 0
        if not wait:
            sys.stdout.write(f"stopping job {job.id}\n")
            return 0
        # Poll rather than follow: following would read all the job's output (a fork bomb's error messages can
        # be a great many) only to skip it.
        final = job
        while not final.state.finished:
            time.sleep(STOP_POLL)
            final = client.status(job_id)
    sys.stdout.write(f"job {final.id} {render.outcome(final)}\n")
    return 0
