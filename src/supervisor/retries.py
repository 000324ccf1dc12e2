"""Retries (`sjob run --retry`, issue J): how a retried job's unit runs again, and which attempt's end is the job's.
Pure.

systemd runs the attempts, so a job is retried whether sjobd runs or not: Restart=on-failure (or always) with
RestartUSec= between attempts, and StartLimitBurst= starts in all over an unlimited StartLimitIntervalUSec=, so
systemd never starts the unit once more than asked (the burst counts the first start too; the start after the last
attempt is refused as start-limit-hit, and the unit settles as failed).

Every attempt is a new run (invocation) of the same unit sjob-<id>.service, with its own forwarder, output and exit
record, told apart by journald's _SYSTEMD_INVOCATION_ID (logformat). The ledger records each attempt's exit record as
it comes, in journal order, and asks `is_final` whether it ends the job: the rule below is systemd's own
(service_shall_restart in src/core/service.c), so the two agree on which attempt is the last.
"""

from __future__ import annotations

from supervisor.errors import invalid_argument
from supervisor.logformat import ExitRecord
from supervisor.protocol import Attempt, Retry, RetryOn

MAX_COUNT = 100  # policy's max_retries may lower it (policyfile.MAX_RETRIES_CEILING is the same)
# At least a second between attempts: journald stamps an entry with the unit's invocation when it receives it, and the
# exit record of one attempt must reach it before systemd starts the next (the report waits for journald to have
# read its entry, then exits; systemd starts the next attempt only after the delay).
MIN_DELAY_USEC = 1_000_000
MAX_DELAY_USEC = 86400 * 1_000_000
UNLIMITED_USEC = 2**64 - 1  # systemd's USEC_INFINITY: the start limit's interval never ends
RESTART = {RetryOn.failure: "on-failure", RetryOn.any: "always"}


def validate(retry: Retry) -> Retry:
    """The retry, if its numbers are in range; InvalidArgument naming the option otherwise."""
    if not 1 <= retry.count <= MAX_COUNT:
        raise invalid_argument(
            f"--retry {retry.count}: a job can be retried 1 to {MAX_COUNT} times", hint="e.g. --retry 3"
        )
    if not MIN_DELAY_USEC <= retry.delay_usec <= MAX_DELAY_USEC:
        raise invalid_argument(
            f"--retry-delay {retry.delay_usec / 1e6:g}s is out of range",
            hint="give 1s to 1d between attempts, e.g. --retry-delay 10s",
        )
    return retry


def unit_properties(retry: Retry) -> list[tuple[str, object]]:
    return [
        ("Restart", RESTART[retry.on]),
        ("RestartUSec", retry.delay_usec),
        ("StartLimitBurst", retry.count + 1),
        ("StartLimitIntervalUSec", UNLIMITED_USEC),
    ]


def is_final(retry: Retry, number: int, result: str, stopped: bool) -> bool:
    """Whether attempt `number` (1 first), which ended with systemd's `result`, is the job's last: systemd starts
    no other after a stop, after the last allowed attempt, or (on failure only) after a success."""
    if stopped or number > retry.count:
        return True
    return retry.on is RetryOn.failure and result == "success"


def attempt_of(record: ExitRecord, number: int) -> Attempt:
    return Attempt(number, record.when_usec, record.result, record.status, record.signal, record.invocation)
