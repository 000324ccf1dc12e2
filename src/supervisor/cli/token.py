"""`sjob token issue|list|revoke`: tokens for principals the kernel cannot name (root and sjob admins only).

The issued token is printed on stdout alone (or written to --output with mode 0600), so it can go straight into
a secret store; its bearer passes it in $SJOB_TOKEN or a file named by $SJOB_TOKEN_FILE, never on a command line.
"""

import argparse
import datetime
import json
import os
import sys

from supervisor.cli import render
from supervisor.cli.command import Argument, Command, Complete, Option
from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import TokenInfo, to_wire
from supervisor.quantities import parse_duration

# What a token may be scoped to: policy.JOB_ACTIONS (a unit test keeps them equal; the CLI imports no daemon code).
ACTIONS = ("run", "stop", "status", "logs", "list", "queue", "retry", "schedule")


def issue(args: argparse.Namespace) -> None:
    actions = [a.strip() for a in args.scope.split(",") if a.strip()] if args.scope else None
    for action in actions or []:
        if action not in ACTIONS:
            raise SjobError(
                ErrorCode.InvalidArgument, f"--scope: unknown action {action!r}", hint=f"use {','.join(ACTIONS)}"
            )
    ttl_usec = parse_duration(args.ttl, "--ttl") if args.ttl is not None else None
    with Client() as client:
        issued = client.issue_token(args.subject, actions, ttl_usec)
    if args.output is not None:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SjobError(
                ErrorCode.InvalidArgument,
                f"cannot create {args.output}: {e.strerror}",
                hint="name a file that does not exist yet (the token is not printed then)",
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(issued.token + "\n")
    if args.json:  # with --output, the token stays in its file
        shown = to_wire(issued.info) if args.output is not None else to_wire(issued)
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    if args.output is None:
        sys.stdout.write(issued.token + "\n")
    sys.stderr.write(
        f"token {issued.info.id} for {issued.info.subject}, valid until {_when(issued.info.expires_usec)}\n"
    )


def show(args: argparse.Namespace) -> None:
    with Client() as client:
        tokens = client.list_tokens()
    if args.json:
        sys.stdout.write(json.dumps([to_wire(t) for t in tokens], indent=2) + "\n")
        return
    rows = [(t.id, _state(t), t.subject, _when(t.expires_usec), ",".join(t.scope)) for t in tokens]
    styles = [{"valid": "green", "revoked": "red"}.get(_state(t), "dim") for t in tokens]
    render.table(("ID", "STATE", "SUBJECT", "EXPIRES", "SCOPE"), rows, sys.stdout, empty="No tokens.", styles=styles)


def revoke(args: argparse.Namespace) -> None:
    with Client() as client:
        info = client.revoke_token(args.id)
    if args.json:
        sys.stdout.write(json.dumps(to_wire(info), indent=2) + "\n")
    else:
        sys.stdout.write(f"token {info.id} of {info.subject} revoked\n")


def _state(token: TokenInfo) -> str:
    if token.revoked_usec is not None:
        return "revoked"
    expired = token.expires_usec < datetime.datetime.now(datetime.UTC).timestamp() * 1e6
    return "expired" if expired else "valid"


def _when(usec: int) -> str:
    return datetime.datetime.fromtimestamp(usec / 1e6).astimezone().strftime("%Y-%m-%d %H:%M:%S")


JSON = Option(("--json",), "print what sjobd answered as JSON")
COMMAND = Command(
    name="token",
    description="""Issue, list and revoke tokens, for callers the kernel cannot name (CI runners, forwarded sockets;
root and sjob admins only). A token's bearer sets SJOB_TOKEN_FILE (or SJOB_TOKEN) and runs sjob as usual; policy
rules with tokens = [SUBJECT] say what it may do and as whom its jobs run.""",
    subcommands=(
        Command(
            name="issue",
            summary="issue a token; it alone goes to stdout (or --output), its id and expiry to stderr",
            description="""Issue a token for SUBJECT. The token alone is printed on stdout (or written to a new file
with mode 0600), its id and expiry on stderr.""",
            options=(
                Option(("--subject",), "who the token is for, as policy rules name it", metavar="NAME", required=True),
                Option(
                    ("--scope",),
                    f"comma-separated actions it allows (default all: {','.join(ACTIONS)})",
                    metavar="ACTIONS",
                ),
                Option(("--ttl",), "how long it is valid: 1h, 7d, 2w (default 1d)", metavar="DURATION"),
                Option(
                    ("-o", "--output"),
                    "write the token to this new file (mode 0600)",
                    metavar="FILE",
                    complete=Complete.files,
                ),
                Option(
                    ("--json",), "print the token and what sjobd knows of it as JSON (with --output, not the token)"
                ),
            ),
            handler=issue,
        ),
        Command(
            name="list",
            summary="list issued tokens: id, subject, expiry, state, scope",
            description="List the tokens sjobd issued, newest first: id, subject, expiry, state and scope.",
            options=(JSON,),
            handler=show,
        ),
        Command(
            name="revoke",
            summary="revoke a token: sjobd refuses it from now on",
            description="Revoke token ID: sjobd refuses it from now on.",
            options=(JSON,),
            arguments=(Argument("id", "ID", "the token id, as 'sjob token list' shows it"),),
            handler=revoke,
        ),
    ),
)
