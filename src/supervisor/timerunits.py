"""Timers (`sjob run --on-calendar`, `--on-active`, issue J): a schedule, checked, and the transient timer unit it
becomes. Pure.

A timer is sjob-<id>.timer, made together with its service sjob-<id>.service in one StartTransientUnit call (the
service as an auxiliary unit, as `systemd-run --on-calendar` makes them, src/run/run.c): systemd starts that service
at the timer's times, each time a new run (invocation) of the same unit, and sjob records each run as a job of its
own. Timer settings go over D-Bus as systemd's transient properties (src/core/dbus-timer.c): TimersCalendar a(ss)
of ("OnCalendar", spec), TimersMonotonic a(st) of ("OnActiveSec" | "OnUnitActiveSec", usec).

- AccuracyUSec=1s: systemd's default (a minute) lets a timer fire up to a minute late, to coalesce wake-ups.
- RemainAfterElapse=false, as systemd-run: a timer that will not fire again (a one-off --on-active) goes away
  once its run is done, instead of staying "elapsed" for ever.
- The calendar spec is written into the timer's unit file as it is (OnCalendar=...), so it is held to the
  characters calendar events are made of: no newline, quote or backslash can reach the file (unitfile). Whether
  it is a valid calendar event is systemd's to say; its refusal reaches the caller as an InvalidArgument.
"""

from __future__ import annotations

import dataclasses
import re

from supervisor import unitfile
from supervisor.errors import invalid_argument
from supervisor.properties import UnitProperties
from supervisor.protocol import Schedule

# Weekdays, dates, times, ranges, repetitions, lists, time zones (systemd.time(7), "Calendar Events").
_CALENDAR = re.compile(r"[A-Za-z0-9_ .,:*/~+-]{1,200}")
MIN_INTERVAL_USEC = 1_000_000
MAX_INTERVAL_USEC = 10 * 366 * 86400 * 1_000_000
ACCURACY_USEC = 1_000_000


def validate(schedule: Schedule) -> Schedule:
    """The schedule if systemd can be given it; InvalidArgument naming the option otherwise. --on-unit-active
    alone also fires first that long after the timer is made: systemd counts it from the service's last start,
    and a service that never ran would never start."""
    if schedule.on_calendar is None and schedule.on_active_usec is None and schedule.on_unit_active_usec is None:
        raise invalid_argument(
            "a timer needs a schedule", hint="give --on-calendar SPEC, --on-active DURATION or --on-unit-active"
        )
    if schedule.on_calendar is not None:
        spec = schedule.on_calendar.strip()
        if not _CALENDAR.fullmatch(spec) or unitfile.problem(spec, unitfile.Kind.word) is not None:
            raise invalid_argument(
                f"--on-calendar '{unitfile.escape(schedule.on_calendar[:80])}' is not a calendar event",
                hint="write it as systemd.time(7) does, e.g. 'Mon..Fri 02:00', 'daily', '*:0/15';"
                " 'systemd-analyze calendar SPEC' checks one",
            )
        schedule = dataclasses.replace(schedule, on_calendar=spec)
    for option, usec in (("--on-active", schedule.on_active_usec), ("--on-unit-active", schedule.on_unit_active_usec)):
        if usec is not None and not MIN_INTERVAL_USEC <= usec <= MAX_INTERVAL_USEC:
            raise invalid_argument(f"{option} {usec / 1e6:g}s is out of range", hint="give 1s to 10 years, e.g. 10m")
    if schedule.on_unit_active_usec is not None and schedule.on_active_usec is None and schedule.on_calendar is None:
        schedule = dataclasses.replace(schedule, on_active_usec=schedule.on_unit_active_usec)
    return schedule


def timer_unit(name: str, schedule: Schedule, description: str) -> UnitProperties:
    """The transient timer `name` for a validated schedule; it triggers the service of the same name."""
    props: list[tuple[str, object]] = [
        ("Description", description),
        ("AccuracyUSec", ACCURACY_USEC),
        ("RemainAfterElapse", False),
    ]
    if schedule.on_calendar is not None:
        props.append(("TimersCalendar", [("OnCalendar", schedule.on_calendar)]))
    monotonic = [
        (base, usec)
        for base, usec in (("OnActiveSec", schedule.on_active_usec), ("OnUnitActiveSec", schedule.on_unit_active_usec))
        if usec is not None
    ]
    if monotonic:
        props.append(("TimersMonotonic", monotonic))
    return UnitProperties(name, tuple(props))
