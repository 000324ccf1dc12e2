"""`sjob run`'s scheduling options (issue J), declared once as the "scheduling" group of run's `COMMAND` and parsed
into the protocol's types; sjobd checks them against the policy. --queue (wait at max_jobs instead of being
refused), --retry N with --retry-delay and --retry-on (run a failed job again), --on-calendar, --on-active and
--on-unit-active (a timer that runs the job later and again)."""

import argparse

from supervisor.cli.command import Option
from supervisor.errors import invalid_argument
from supervisor.protocol import Retry, RetryOn, Schedule
from supervisor.quantities import parse_duration

GROUP = "scheduling"
OPTIONS = (
    Option(
        ("--queue",), "at your policy's cap on running jobs, wait in your queue instead of being refused", group=GROUP
    ),
    Option(("--retry",), "run it again when it fails, up to N more times (systemd's Restart=)", "N", group=GROUP),
    Option(("--retry-delay",), "time between attempts (default 1s)", "DURATION", group=GROUP),
    Option(
        ("--retry-on",),
        "retry after a failure (default), or after any end but a stop",
        "WHEN",
        choices=tuple(RetryOn.__members__),
        group=GROUP,
    ),
    Option(
        ("--on-calendar",),
        "make a timer: run it at these times ('Mon..Fri 02:00'; systemd.time(7))",
        "SPEC",
        group=GROUP,
    ),
    Option(("--on-active",), "make a timer: run it this long from now", "DURATION", group=GROUP),
    Option(
        ("--on-unit-active",), "make a timer: run it again this long after each run started", "DURATION", group=GROUP
    ),
)


def retry_policy(args: argparse.Namespace) -> Retry | None:
    """--retry N [--retry-delay D] [--retry-on W] as a Retry, or None without --retry."""
    if args.retry is None:
        if args.retry_delay is not None or args.retry_on is not None:
            raise invalid_argument("--retry-delay and --retry-on go with --retry N", hint="e.g. --retry 3")
        return None
    if not args.retry.isdigit() or int(args.retry) < 1:
        raise invalid_argument(f"--retry {args.retry[:20]!r}: give how many times, 1 or more", hint="--retry 3")
    delay = parse_duration(args.retry_delay, "--retry-delay") if args.retry_delay is not None else None
    on = RetryOn(args.retry_on) if args.retry_on is not None else RetryOn.failure
    return Retry(int(args.retry), on=on) if delay is None else Retry(int(args.retry), delay, on)


def schedule(args: argparse.Namespace) -> Schedule | None:
    """The timer's schedule, or None if no timer option was given."""
    if args.on_calendar is None and args.on_active is None and args.on_unit_active is None:
        return None
    if args.queue:
        raise invalid_argument("--queue does not go with a timer", hint="each run of a timer starts when it is due")
    active = parse_duration(args.on_active, "--on-active") if args.on_active is not None else None
    again = parse_duration(args.on_unit_active, "--on-unit-active") if args.on_unit_active is not None else None
    return Schedule(args.on_calendar, active, again)
