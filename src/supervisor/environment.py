"""The environment variables sjob reads, each named once with what it does (the client reads them; `sjob --help`,
the man page and README list them)."""

SOCKET = "SJOB_SOCKET"
TOKEN = "SJOB_TOKEN"  # noqa: S105 - a variable's name: the token itself is in it
TOKEN_FILE = "SJOB_TOKEN_FILE"  # noqa: S105 - names a file holding it (never argv: others can read argv)
NO_COLOR = "NO_COLOR"
SSH = "SJOB_SSH"

VARIABLES = {
    SOCKET: "sjobd's socket (default /run/sjob/io.sjob.Jobs)",
    TOKEN: "a token (from 'sjob token issue') to act as its subject instead of as yourself",
    TOKEN_FILE: f"a file holding such a token (${TOKEN} wins when both are set)",
    SSH: "the ssh command that -H runs, split as a shell would (default ssh): e.g. 'ssh -i KEY -p 2222'",
    NO_COLOR: "set to anything but empty: no colour, even on a terminal (nor with TERM=dumb)",
}
