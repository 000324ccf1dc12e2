"""The one error type of sjob and its machine codes.

Every failure a user can cause or meet is an `SjobError`: a stable machine `code` (which the server sends as the
Varlink error `io.sjob.Jobs.<code>`), a one-line `message` saying what went wrong, and an optional `hint` saying
what to do about it. The client turns the Varlink error back into the same `SjobError`, so a message written in
the daemon reaches the terminal unchanged. Anything that is not an `SjobError` is a bug: the daemon logs it with
a traceback and answers `InternalError`.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Machine codes; each is also the Varlink error name inside the io.sjob.Jobs interface."""

    NoSuchJob = "NoSuchJob"
    InvalidArgument = "InvalidArgument"
    PermissionDenied = "PermissionDenied"
    StartFailed = "StartFailed"
    SystemdError = "SystemdError"
    RequestTooLarge = "RequestTooLarge"
    TooManyJobs = "TooManyJobs"
    TooManyConnections = "TooManyConnections"
    RequestTimeout = "RequestTimeout"
    StorageError = (
        "StorageError"  # sjobd cannot write its records (a full disk): the request is refused, sjobd serves on
    )
    InternalError = "InternalError"
    NoSuchFunction = "NoSuchFunction"  # also what a function one may not call looks like
    Busy = "Busy"  # a function at its concurrency cap, with its queue full or the wait over
    BuildFailed = "BuildFailed"  # a deploy whose code does not compile or whose requirements do not install
    # Raised only on the client side; never sent over the wire.
    NotConnected = "NotConnected"
    ProtocolError = "ProtocolError"
    ExecutableNotFound = "ExecutableNotFound"


class SjobError(Exception):
    """A failure with a machine code, a message for humans and an optional hint for what to do next."""

    def __init__(self, code: ErrorCode, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __repr__(self) -> str:
        return f"SjobError({self.code.value}, {self.message!r}, hint={self.hint!r})"


class NoSuchProcessError(SjobError):
    """systemd has no such process of the unit to signal: KillUnit for its main process once that has gone."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.SystemdError, message)


class NoAnswerError(SjobError):
    """systemd did not answer in time: what became of the call (a unit started, or not) is not known."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(ErrorCode.SystemdError, message, hint)


def no_such_job(job_id: str) -> SjobError:
    # The same words for "does not exist" and "belongs to someone else": no existence oracle.
    return SjobError(ErrorCode.NoSuchJob, f"no job with id {job_id!r}", hint="'sjob list' shows the ids of your jobs")


def no_such_function(name: str) -> SjobError:
    # The same words for "does not exist" and "you may not call it": no existence oracle.
    return SjobError(
        ErrorCode.NoSuchFunction, f"no function named {name!r}", hint="'sjob fn list' shows the functions you may call"
    )


def invalid_argument(message: str, hint: str | None = None) -> SjobError:
    return SjobError(ErrorCode.InvalidArgument, message, hint)
