"""The line grammar: names, command splitting and the encoding of every line.

    line     = [ sep ] command [ ( " " / "\\t" ) rest ]
    sep      = 1*( " " / "\\t" )
    IAM name | LOG [message] | SET key [value] | PING [token]     (client -> server)
    PONG [token] | ERR code text                                  (server -> client)
    name, key = 1*128( ALPHA / DIGIT / "_" / "-" / "." / ":" / "@" )

Trailing spaces and tabs are trimmed from every line. A ``LOG`` message is the rest of the line
after the one space or tab that follows ``LOG``: its leading whitespace is kept (a traceback's
indentation survives). Every other argument is trimmed at both ends.
"""

import re

from ._errors import ErrorCode, LocalProtocolError
from ._limits import MAX_NAME_LENGTH

__all__ = [
    "NAME_RE",
    "TRIM",
    "encode_error",
    "encode_pong",
    "is_valid_name",
    "split_command",
]

TRIM = " \t"
NAME_RE = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{MAX_NAME_LENGTH}}}")
# Command, then the rest after the one space or tab that follows it (the line is trimmed first).
_COMMAND_RE = re.compile(r"([^ \t]*)[ \t]?(.*)", re.DOTALL)


def is_valid_name(name: str) -> bool:
    """True if ``name`` is a valid client name or state key."""
    return NAME_RE.fullmatch(name) is not None


def split_command(line: str) -> tuple[str, str]:
    """Split a decoded line (no newline) into its command and the rest: what follows the one
    space or tab after the command, with trailing spaces and tabs trimmed and leading ones kept
    (a ``LOG`` message as it is; ``.lstrip(TRIM)`` gives any other argument)."""
    match = _COMMAND_RE.match(line.strip(TRIM))
    assert match is not None  # the pattern matches any string
    return match[1], match[2]


def single_line(text: str, what: str) -> str:
    """Return ``text`` if it holds no line break; raises LocalProtocolError otherwise."""
    if "\n" in text or "\r" in text:
        raise LocalProtocolError(f"{what} must not contain a line break: {text!r}")
    return text


def encode_line(command: str, argument: str = "") -> bytes:
    line = f"{command} {argument}\n" if argument else f"{command}\n"
    return line.encode("utf-8", "replace")


def encode_pong(token: str) -> bytes:
    """``PONG [token]``; raises LocalProtocolError if the token holds a line break."""
    return encode_line("PONG", single_line(token, "a PONG token"))


def encode_error(code: ErrorCode, text: str) -> bytes:
    """``ERR <code> <text>``; line breaks inside ``text`` become spaces."""
    return encode_line("ERR", f"{code.value} {text.replace(chr(10), ' ').replace(chr(13), ' ')}")
