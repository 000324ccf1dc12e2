"""The audit trail: every authorization decision sjobd makes, as one structured journald entry.

    journalctl SJOB_JOB_ID=<id>                  a job's whole story: who started, read, stopped it, its output
    journalctl SJOB_AUDIT=1 SJOB_DECISION=denied  every refusal
    journalctl SJOB_PRINCIPAL=token:ci-runner     everything one token subject did

Fields: SJOB_AUDIT=1, SJOB_ACTION, SJOB_DECISION (allowed|denied), SJOB_PRINCIPAL (alice | token:NAME), SJOB_UID,
SJOB_PID, SJOB_REASON, and where they apply SJOB_JOB_ID and SJOB_TOKEN_ID (a token's id, never the token), and for
functions SJOB_FUNCTION, SJOB_VERSION and, for a call, SJOB_CALLER.
"""

from __future__ import annotations

import dataclasses
import logging
import syslog

from supervisor.auth import Principal

log = logging.getLogger(__name__)

# journalctl -o verbose shows it; one id for all of sjob's audit entries (made with `systemd-id128 new`).
MESSAGE_ID = "5f0c1a6e3b9d4c27a8e1f2b3c4d5e6f7"


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    principal: Principal | None  # None: the peer was refused before it could be identified
    action: str
    allowed: bool
    reason: str
    job_id: str | None = None
    token_id: str | None = None
    function: str | None = None  # a function's deploy, rollback, removal or call (issue G)
    version: int | None = None

    @property
    def message(self) -> str:
        who = str(self.principal) if self.principal is not None else "an unidentified peer"
        target = f" function {self.function}" if self.function else ""
        target += f"@{self.version}" if self.version is not None else ""
        target += f" job {self.job_id}" if self.job_id else ""
        verdict = "allowed" if self.allowed else "denied"
        return f"{verdict}: {who}: {self.action}{target} ({self.reason})"

    def fields(self) -> dict[str, str]:
        fields = {
            "MESSAGE": self.message,
            "MESSAGE_ID": MESSAGE_ID,
            "PRIORITY": str(syslog.LOG_INFO if self.allowed else syslog.LOG_WARNING),
            "SYSLOG_IDENTIFIER": "sjobd",
            "SJOB_AUDIT": "1",
            "SJOB_ACTION": self.action,
            "SJOB_DECISION": "allowed" if self.allowed else "denied",
            "SJOB_REASON": self.reason,
        }
        if self.principal is not None:
            fields |= {
                "SJOB_PRINCIPAL": self.principal.name,
                "SJOB_UID": str(self.principal.uid),
                "SJOB_PID": str(self.principal.pid),
            }
            if self.principal.token is not None:
                fields["SJOB_TOKEN_ID"] = self.principal.token.token_id
        if self.job_id:
            fields["SJOB_JOB_ID"] = self.job_id
        if self.token_id:
            fields["SJOB_TOKEN_ID"] = self.token_id
        if self.function:
            fields["SJOB_FUNCTION"] = self.function
            if self.principal is not None and self.action == "call":
                fields["SJOB_CALLER"] = self.principal.name
        if self.version is not None:
            fields["SJOB_VERSION"] = str(self.version)
        return fields


class JournalAudit:
    """Sends entries to journald; should that fail, to sjobd's log, so no decision goes unrecorded."""

    def record(self, entry: AuditEntry) -> None:
        from systemd import journal  # noqa: PLC0415 - the daemon's dependency, not the pure code's

        try:
            journal.sendv(*(f"{key}={value}" for key, value in entry.fields().items()))
        except OSError as e:
            log.warning("audit entry not sent to journald (%s): %s", e, entry.message)
