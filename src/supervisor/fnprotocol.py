"""The io.sjob.Functions Varlink interface: names and typed messages (issue G). A *function* is Python code a
configurator deployed under a name; each deploy is a new immutable version; each call is a job (io.sjob.Jobs), so
its output, status and record are a job's.

Like `protocol`, the contract between `sjob fn` and sjobd: asyncvarlink derives the interface from these
dataclasses, the client converts replies with `protocol.from_wire`. Requests are closed, replies open.

No `from __future__ import annotations`: asyncvarlink reads the field types at runtime.
"""

import enum
import re

from supervisor.errors import invalid_argument
from supervisor.frozen import frozen
from supervisor.protocol import Limits

INTERFACE = "io.sjob.Functions"

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
# users as passwd spells them, groups with a leading @, or * for every local user
_GRANTEE = re.compile(r"\*|@?[a-z_][a-z0-9_.-]{0,31}\$?")
MAX_CODE = 512 * 1024  # bytes of Python source
MAX_REQUIREMENTS = 64 * 1024
MAX_DESCRIPTION = 200
MAX_ALLOW = 64
MAX_CONCURRENCY = 1024


class Method(enum.StrEnum):
    Deploy = f"{INTERFACE}.Deploy"
    List = f"{INTERFACE}.List"
    Show = f"{INTERFACE}.Show"
    Versions = f"{INTERFACE}.Versions"
    Rollback = f"{INTERFACE}.Rollback"
    Remove = f"{INTERFACE}.Remove"
    Call = f"{INTERFACE}.Call"
    Calls = f"{INTERFACE}.Calls"


@frozen
class FunctionSettings:
    """What a deploy may say besides the code; unset fields keep the function's current setting (or the default:
    no description, only the deployer may call it, policy's limits, concurrency 4)."""

    description: str | None = None
    allow: list[str] | None = None  # who may call it: user names, @group names, or * (every local user)
    limits: Limits | None = None  # per call: cpu, memory, tasks, timeout (within the policy's ceilings)
    concurrency: int | None = None  # calls running at once; more wait in a short queue, then are refused as busy


@frozen
class FunctionVersion:
    version: int
    created_usec: int
    deployed_by: str
    sha256: str  # of the code
    size: int  # bytes of code
    requirements: bool  # whether it has an environment of its own (--requirements)
    build_job: str  # the job that compiled it (and installed its requirements): sjob logs ID


@frozen
class Function:
    name: str
    owner: str
    owner_uid: int
    version: int  # the version calls get (the latest, unless rolled back)
    latest: int
    created_usec: int
    updated_usec: int
    allow: list[str]
    concurrency: int
    description: str | None = None
    limits: Limits | None = None
    running: int = 0  # calls running now


@frozen
class FunctionCall:
    """One call, as its function's history shows it: who, which version, when, how it ended, bytes in and out."""

    job: str
    caller: str
    version: int
    state: str
    created_usec: int
    started_usec: int | None = None
    ended_usec: int | None = None
    exit_status: int | None = None
    signal: int | None = None
    result: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


@frozen
class Deployed:
    function: Function
    version: FunctionVersion


def parse_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        shown = text if len(text) <= 40 and text.isprintable() else repr(text[:40]) + "…"
        raise invalid_argument(
            f"invalid function name {shown!r}",
            hint="a function name is 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter",
        )
    return text


def parse_reference(text: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@VERSION`."""
    name, at, version = text.partition("@")
    if not at:
        return parse_name(name), None
    if not version.isdigit() or not 1 <= int(version) <= 1_000_000_000:
        raise invalid_argument(f"invalid version {version[:20]!r} in {text[:80]!r}", hint="write NAME@3")
    return parse_name(name), int(version)


def check_settings(settings: FunctionSettings) -> FunctionSettings:
    if settings.description is not None and (
        len(settings.description) > MAX_DESCRIPTION or not settings.description.isprintable()
    ):
        raise invalid_argument(f"the description must be one printable line of at most {MAX_DESCRIPTION} characters")
    if settings.allow is not None:
        if len(settings.allow) > MAX_ALLOW:
            raise invalid_argument(f"at most {MAX_ALLOW} --allow entries")
        for grantee in settings.allow:
            if not _GRANTEE.fullmatch(grantee):
                raise invalid_argument(
                    f"--allow {grantee[:40]!r} is not a user, an @group or *", hint="e.g. --allow bob --allow @analysts"
                )
    if settings.concurrency is not None and not 1 <= settings.concurrency <= MAX_CONCURRENCY:
        raise invalid_argument(f"--concurrency must be 1 to {MAX_CONCURRENCY}")
    return settings
