"""`sjob token issue|list|revoke`: tokens for principals the kernel cannot name (root and sjob admins only).

The issued token is printed on stdout alone (or written to --output with mode 0600), so it can go straight into
a secret store; its bearer passes it in $SJOB_TOKEN or a file named by $SJOB_TOKEN_FILE, never on a command line.
"""

import datetime
import json
import os
import sys
from typing import TYPE_CHECKING, Annotated

from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import TokenInfo, to_wire
from supervisor.quantities import parse_duration

if TYPE_CHECKING:
    import typer

ACTIONS = ("run", "stop", "status", "logs", "list")


def register(app: "typer.Typer") -> None:
    import typer  # noqa: PLC0415

    tokens = typer.Typer(
        name="token",
        help="Issue, list and revoke tokens (root and sjob admins).",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @tokens.command()
    def issue(
        subject: Annotated[str, typer.Option("--subject", help="Who the token is for, as policy rules name it.")],
        scope: Annotated[
            str | None,
            typer.Option("--scope", help=f"Comma-separated actions it allows (default all: {','.join(ACTIONS)})."),
        ] = None,
        ttl: Annotated[
            str | None, typer.Option("--ttl", help="How long it is valid, e.g. 1h, 7d (default 1d).")
        ] = None,
        output: Annotated[
            str | None, typer.Option("--output", "-o", help="Write the token to this new file (mode 0600).")
        ] = None,
    ) -> None:
        """Issue a token; prints it (only it) on stdout, and its id and expiry on stderr."""
        issue_token(subject, scope, ttl, output)

    @tokens.command(name="list")
    def list_tokens(
        as_json: Annotated[bool, typer.Option("--json", help="Print the tokens as a JSON array.")] = False,
    ) -> None:
        """List issued tokens, newest first: id, subject, scope, expiry, revocation."""
        show(as_json)

    @tokens.command()
    def revoke(
        token_id: Annotated[str, typer.Argument(metavar="ID", help="The token id, as 'sjob token list' shows.")],
    ) -> None:
        """Revoke a token: sjobd refuses it from now on."""
        with Client() as client:
            info = client.revoke_token(token_id)
        sys.stdout.write(f"token {info.id} of {info.subject} revoked\n")

    app.add_typer(tokens)


def issue_token(subject: str, scope: str | None, ttl: str | None, output: str | None) -> None:
    actions = [a.strip() for a in scope.split(",") if a.strip()] if scope else None
    for action in actions or []:
        if action not in ACTIONS:
            raise SjobError(
                ErrorCode.InvalidArgument, f"--scope: unknown action {action!r}", hint=f"use {','.join(ACTIONS)}"
            )
    ttl_usec = parse_duration(ttl, "--ttl") if ttl is not None else None
    with Client() as client:
        issued = client.issue_token(subject, actions, ttl_usec)
    if output is not None:
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SjobError(
                ErrorCode.InvalidArgument,
                f"cannot create {output}: {e.strerror}",
                hint="name a file that does not exist yet (the token is not printed then)",
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(issued.token + "\n")
    else:
        sys.stdout.write(issued.token + "\n")
    sys.stderr.write(
        f"token {issued.info.id} for {issued.info.subject}, valid until {_when(issued.info.expires_usec)}\n"
    )


def show(as_json: bool) -> None:
    with Client() as client:
        tokens = client.list_tokens()
    if as_json:
        sys.stdout.write(json.dumps([to_wire(t) for t in tokens], indent=2) + "\n")
        return
    sys.stdout.write(f"{'ID':32}  {'SUBJECT':16}  {'EXPIRES':20}  {'STATE':8}  SCOPE\n")
    for t in tokens:
        sys.stdout.write(f"{t.id:32}  {t.subject:16}  {_when(t.expires_usec):20}  {_state(t):8}  {','.join(t.scope)}\n")


def _state(token: TokenInfo) -> str:
    if token.revoked_usec is not None:
        return "revoked"
    expired = token.expires_usec < datetime.datetime.now(datetime.UTC).timestamp() * 1e6
    return "expired" if expired else "valid"


def _when(usec: int) -> str:
    return datetime.datetime.fromtimestamp(usec / 1e6).astimezone().strftime("%Y-%m-%d %H:%M:%S")
