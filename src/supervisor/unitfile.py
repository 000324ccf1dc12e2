"""What survives a transient unit file: which strings systemd would read back as something else, and a printable
form for free text. Pure.

systemd writes every property of a transient unit into /run/systemd/transient/<unit> and reads that file again on
every `daemon-reload` (package upgrades, install.sh, an admin). How it writes a property decides what is safe in it
(src/core/dbus-execute.c, dbus-unit.c, unit.c `unit_write_setting`, `unit_concat_strv`):

- ExecStart=/ExecStopPost= arguments and Environment= are C-escaped and quoted: any text survives.
- Every other string is written as it is, with only `%` escaped: a newline (or CR, or NUL) ends the line and what
  follows becomes settings of its own (issue E: an argument in Description= became `ExecStop=+/bin/sh ...`, run as
  root on the next stop); a trailing backslash joins the next line; leading and trailing blanks are stripped.
- A string inside a list (ReadWritePaths= and the other path lists, written as `"a" "b"`) is read back by
  extract_first_word(EXTRACT_UNQUOTE): a `"` ends the quoting and a `\\` escapes the next character, so either
  changes the list (`/tmp/x" "/etc` would make /etc writable).

So a value is a *line* (a property of its own) or a *word* (an element of a list or struct), and each kind has its
problems. Everything else sjob sends is a number or a boolean.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    line = "line"  # a string property of its own: Description=, WorkingDirectory=, User=, ...
    word = "word"  # a string in a list or a struct: ReadWritePaths=, IOReadBandwidthMax='s device, ...


def problem(value: str, kind: Kind) -> str | None:
    """Why systemd would read `value` back differently from its unit file, or None if it would not."""
    for char in value:
        if not char.isprintable():
            # Control characters (newline, CR, ESC...), line and paragraph separators, unassigned code points and
            # lone surrogates: isprintable() is False for all of them, True for letters, marks, symbols and spaces.
            return f"a control or non-printable character ({escape(char)})"
        if kind is Kind.word and char in _UNQUOTED:
            return f"a {_UNQUOTED[char]}"
    if value.endswith("\\"):
        return "a backslash at the end"
    if value != value.strip():
        return "blanks at the start or end"
    return None


def escape(text: str, *, backslashes: bool = True) -> str:
    """`text` with every non-printable character and backslash written as a Python/C escape (`\\n`, `\\x1b`,
    `\\u2028`): printable, on one line, and unambiguous. Without `backslashes`, backslashes stay as they are:
    still safe to print on a terminal (no character left can move the cursor or start an escape sequence), for
    text that may already hold escapes (sjob's CLI prints sjobd's messages so)."""
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\" if backslashes else char)
        elif char.isprintable():
            out.append(char)
        elif char in _SHORT:
            out.append(_SHORT[char])
        elif (code := ord(char)) < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNQUOTED = {'"': "double quote", "\\": "backslash"}
