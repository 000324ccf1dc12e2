"""`sjob run`'s scheduling options (issue J), parsed into the protocol's types; the daemon checks them against the
policy. --queue (wait at max_jobs instead of being refused), --retry N with --retry-delay and --retry-on (run a
failed job again), --on-calendar, --on-active and --on-unit-active (a timer that runs the job later and again).

Kept apart from run.py's own options, so that the CLI's framework can declare them wherever it declares options.
"""

import dataclasses

from supervisor.errors import invalid_argument
from supervisor.protocol import Retry, RetryOn, Schedule
from supervisor.quantities import parse_duration

# (option, metavar, help), in the order `sjob run --help` shows them
OPTIONS = (
    ("--queue", "", "At your policy's cap on running jobs, wait in your queue instead of being refused."),
    ("--retry", "N", "Run it again when it fails, up to N more times (systemd's Restart=)."),
    ("--retry-delay", "DURATION", "Time between attempts (default 1s)."),
    ("--retry-on", "failure|any", "Retry after a failure (default), or after any end but a stop."),
    ("--on-calendar", "SPEC", "Make a timer: run it at these times ('Mon..Fri 02:00'; systemd.time(7))."),
    ("--on-active", "DURATION", "Make a timer: run it this long from now."),
    ("--on-unit-active", "DURATION", "Make a timer: run it again this long after each run started."),
)


@dataclasses.dataclass(frozen=True, slots=True)
class SchedArgs:
    queue: bool = False
    retry: str | None = None
    retry_delay: str | None = None
    retry_on: str | None = None
    on_calendar: str | None = None
    on_active: str | None = None
    on_unit_active: str | None = None

    def retry_policy(self) -> Retry | None:
        if self.retry is None:
            if self.retry_delay is not None or self.retry_on is not None:
                raise invalid_argument("--retry-delay and --retry-on go with --retry N", hint="e.g. --retry 3")
            return None
        if not self.retry.isdigit() or int(self.retry) < 1:
            raise invalid_argument(f"--retry {self.retry[:20]!r}: give how many times, 1 or more", hint="--retry 3")
        delay = parse_duration(self.retry_delay, "--retry-delay") if self.retry_delay is not None else None
        if self.retry_on is not None and self.retry_on not in RetryOn.__members__:
            raise invalid_argument(f"--retry-on {self.retry_on[:20]!r}: give failure or any")
        on = RetryOn(self.retry_on) if self.retry_on is not None else RetryOn.failure
        return Retry(int(self.retry), on=on) if delay is None else Retry(int(self.retry), delay, on)

    def schedule(self) -> Schedule | None:
        """The timer's schedule, or None if no timer option was given."""
        if self.on_calendar is None and self.on_active is None and self.on_unit_active is None:
            return None
        if self.queue:
            raise invalid_argument("--queue does not go with a timer", hint="each run of a timer starts when it is due")
        active = parse_duration(self.on_active, "--on-active") if self.on_active is not None else None
        again = parse_duration(self.on_unit_active, "--on-unit-active") if self.on_unit_active is not None else None
        return Schedule(self.on_calendar, active, again)
