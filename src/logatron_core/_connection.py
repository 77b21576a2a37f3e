"""The server side of one connection: bytes in, protocol events out, reply bytes back.

Contract: ``receive_data(data)`` only buffers (``b""`` means end of input; data after it is a
``RuntimeError``); ``next_event()`` parses on demand and returns one event, ``NEED_DATA``, or
``ConnectionClosed`` once input has ended. Whatever bytes arrive, ``next_event()`` returns
events or raises :class:`RemoteProtocolError` (only for a first line that is not a valid
``IAM``), never anything else.

Strategy: the state machine is one Enum and the table ``TRANSITIONS``, consulted line by line.
Once a client has identified itself, a block of lines that are all ``LOG`` lines (the stream's
usual content) is recognised with two counts over its bytes and becomes a single :class:`Log`
event whose messages are those bytes (a :class:`Lines`, parsed by :func:`log_messages` only when
read, with ``_log_run``); a block of ``LOG`` lines ending in one other line (a ``PING``) is cut
in two. Any other block takes the line-by-line path, which gives the same events.
"""

import re
from collections import deque
from collections.abc import Sequence
from enum import Enum

from ._errors import ErrorCode, RemoteProtocolError
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    ErrorReply,
    Identify,
    Log,
    NeedData,
    Ping,
    Pong,
    Rejected,
    ServerEvent,
    SetState,
)
from ._framing import LineBuffer, Piece
from ._limits import MAX_LINE_BYTES
from ._lines import Lines
from ._wire import TRIM, encode_error, encode_pong, is_valid_name, split_command

__all__ = [
    "TRANSITIONS",
    "ConnectionState",
    "LineKind",
    "ServerConnection",
    "classify",
    "log_messages",
]


class ConnectionState(Enum):
    AWAIT_IAM = "await-iam"
    IDENTIFIED = "identified"
    FAILED = "failed"  # a fatal protocol error was raised; nothing more is parsed
    CLOSED = "closed"  # input ended


class LineKind(Enum):
    IAM = "iam"
    BAD_IAM = "bad-iam"  # IAM with a missing or invalid name
    LOG = "log"
    SET = "set"
    BAD_SET = "bad-set"  # SET with a missing or invalid key
    PING = "ping"
    BLANK = "blank"
    UNKNOWN = "unknown"


class Outcome(Enum):
    EMIT = "emit"  # the line's event is emitted
    IGNORE = "ignore"
    FAIL = "fail"  # fatal: bad-iam, the connection ends
    REJECT_UNKNOWN = "reject-unknown"  # ERR unknown-command, the line is ignored
    REJECT_SET = "reject-set"  # ERR bad-set, the line is ignored


_A, _I = ConnectionState.AWAIT_IAM, ConnectionState.IDENTIFIED
TRANSITIONS: dict[tuple[ConnectionState, LineKind], tuple[ConnectionState, Outcome]] = {
    **{(_A, kind): (ConnectionState.FAILED, Outcome.FAIL) for kind in LineKind},
    (_A, LineKind.IAM): (_I, Outcome.EMIT),
    (_I, LineKind.IAM): (_I, Outcome.REJECT_UNKNOWN),  # a name is given once per connection
    (_I, LineKind.BAD_IAM): (_I, Outcome.REJECT_UNKNOWN),
    (_I, LineKind.LOG): (_I, Outcome.EMIT),
    (_I, LineKind.SET): (_I, Outcome.EMIT),
    (_I, LineKind.BAD_SET): (_I, Outcome.REJECT_SET),
    (_I, LineKind.PING): (_I, Outcome.EMIT),
    (_I, LineKind.BLANK): (_I, Outcome.IGNORE),
    (_I, LineKind.UNKNOWN): (_I, Outcome.REJECT_UNKNOWN),
}

# A block of LOG lines only: one match per line, the message in group 1 (after the one space or
# tab that follows LOG, trailing whitespace trimmed, leading whitespace kept).
_LOG_LINE_RE = re.compile(r"^LOG(?:[ \t](.*[^ \t\n])?)?[ \t]*$", re.MULTILINE)
_WHITESPACE = frozenset(TRIM)


def _log_run(text: str) -> Sequence[str] | None:
    """The messages of ``text`` (lines without the last newline) if every line is a LOG line.

    The common case, every line ``LOG <message>`` with one space, is one ``split`` on
    ``"\nLOG "`` checked against the count of lines: about three times faster than a regular
    expression. Only trailing whitespace is trimmed, and only when some line has it (``rfind``
    is the fastest substring search CPython has for that). Other all-LOG blocks (a tab after
    ``LOG``, a bare ``LOG``) go through ``_LOG_LINE_RE``.
    """
    lines = text.count("\n") + 1
    if text.startswith("LOG "):
        messages = text[4:].split("\nLOG ")
        if len(messages) == lines:
            if text[-1] in _WHITESPACE or text.rfind(" \n") >= 0 or text.rfind("\t\n") >= 0:
                return [message.rstrip(TRIM) for message in messages]
            return messages
    messages = _LOG_LINE_RE.findall(text)
    return messages if len(messages) == lines else None


def log_messages(data: bytes) -> Sequence[str]:
    """The messages of a block of ``LOG`` lines as received (each line starts with ``LOG `` and
    ends in a newline): what the line-by-line path would give for them."""
    text = data.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    messages = _log_run(text[:-1])
    assert messages is not None, "not a block of LOG lines"
    return messages


def classify(line: str) -> tuple[LineKind, ServerEvent | None]:
    """The kind of one decoded line (no newline) and the event it carries, if valid."""
    command, rest = split_command(line)
    if command == "LOG":
        return LineKind.LOG, Log((rest,))
    argument = rest.lstrip(TRIM)
    if command == "SET":
        key, value = split_command(argument)
        if is_valid_name(key):
            return LineKind.SET, SetState(key, value.lstrip(TRIM))
        return LineKind.BAD_SET, None
    if command == "PING":
        # A lone "\r" could not be echoed back on one line: it is dropped from the token.
        return LineKind.PING, Ping(argument.replace("\r", ""))
    if command == "IAM":
        if is_valid_name(argument):
            return LineKind.IAM, Identify(argument)
        return LineKind.BAD_IAM, None
    if not command:
        return LineKind.BLANK, None
    return LineKind.UNKNOWN, None


class ServerConnection:
    """Protocol state of one client connection, seen from the server.

    ``max_line_bytes`` bounds each line and so the bytes buffered (ValueError below 1).
    """

    __slots__ = ("_error", "_events", "_framer", "_input_ended", "_pieces", "state")

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._framer = LineBuffer(max_line_bytes)
        # Pieces fed and not parsed yet (None when there are none: no deque is kept while a
        # connection waits), and the events of the piece parsed last, the next one last.
        self._pieces: deque[Piece] | None = None
        self._events: list[ServerEvent] = []
        self._input_ended = False
        self._error: RemoteProtocolError | None = None
        self.state = ConnectionState.AWAIT_IAM

    @property
    def max_line_bytes(self) -> int:
        return self._framer.max_line_bytes

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer ended its side.

        Raises RuntimeError for data after end of input. Bytes that arrive after a fatal error
        are dropped. A ``bytearray`` or ``memoryview`` is copied (the lines may be kept as they
        are: see ``Lines``).
        """
        if self._input_ended:
            raise RuntimeError("received data after end of input")
        if self.state is ConnectionState.FAILED:
            return
        if data:
            if type(data) is not bytes:
                data = bytes(data)
            pieces = self._framer.feed(data)
        else:
            self._input_ended = True
            pieces = self._framer.close()
        if not pieces:
            return
        if self._pieces is None:
            self._pieces = deque(pieces)
        else:
            self._pieces.extend(pieces)

    def next_event(self) -> ServerEvent | NeedData:
        """The next event, ``NEED_DATA``, or ``ConnectionClosed`` (repeated) after end of input.

        Raises RemoteProtocolError (code ``BAD_IAM``) when the first line is not a valid
        ``IAM``; events parsed before it are returned first, and every later call raises the
        same error.
        """
        while not self._events:
            if self._error is not None:
                raise self._error
            pieces = self._pieces
            if pieces is None:
                if self._input_ended:
                    self.state = ConnectionState.CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            piece = pieces.popleft()
            if not pieces:
                self._pieces = None
            self._parse(*piece)
            self._events.reverse()
        return self._events.pop()

    def send(self, reply: Pong | ErrorReply) -> bytes:
        """Encode a reply to the peer. Raises LocalProtocolError for a token with a line break."""
        if isinstance(reply, Pong):
            return encode_pong(reply.token)
        return encode_error(reply.code, reply.text)

    def _parse(self, data: bytes, truncated: bool) -> None:
        if not truncated and self.state is ConnectionState.IDENTIFIED and data.startswith(b"LOG "):
            lines = data.count(b"\n")
            log_lines = data.count(b"\nLOG ") + 1  # how many lines are LOG lines, if all are
            if log_lines == lines:
                self._events.append(Log(Lines.from_bytes(data, lines, log_messages)))
                return
            # LOG lines then one other line (a PING barrier): the LOG lines keep their bytes.
            last = data.rfind(b"\n", 0, len(data) - 1) + 1
            if log_lines == lines - 1 and not data.startswith(b"LOG", last):
                self._events.append(Log(Lines.from_bytes(data[:last], lines - 1, log_messages)))
                data = data[last:]
        elif not truncated and self.state is ConnectionState.AWAIT_IAM:
            end = data.find(b"\n") + 1
            if end < len(data):  # the IAM line, then the rest as a block of its own
                self._parse(data[:end], False)
                if self._error is None:
                    self._parse(data[end:], False)
                return
        text = data.decode("utf-8", "replace")
        if truncated:
            if self.state is ConnectionState.IDENTIFIED:
                detail = f"line longer than {self.max_line_bytes} bytes, kept cut to the limit"
                self._events.append(Rejected(ErrorCode.LINE_TOO_LONG, detail))
            self._parse_lines([text], truncated=True)
            return
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        text = text[:-1]  # every block ends in a newline
        if self.state is ConnectionState.AWAIT_IAM:
            self._parse_lines([text])  # one line: see above
            return
        messages = _log_run(text)
        if messages is not None:
            self._events.append(Log(tuple(messages)))
        else:
            self._parse_lines(text.split("\n"))

    def _parse_lines(self, lines: list[str], *, truncated: bool = False) -> None:
        """The line-by-line path: each line through the transition table."""
        run: list[str] = []  # consecutive LOG messages, emitted as one event
        for line in lines:
            kind, event = classify(line)
            self.state, outcome = TRANSITIONS[self.state, kind]
            if outcome is Outcome.EMIT and isinstance(event, Log):
                run.append(event.messages[0])
                continue
            if run:
                self._events.append(Log(tuple(run)))
                run = []
            if outcome is Outcome.EMIT:
                assert event is not None
                self._events.append(event)
            elif outcome is Outcome.REJECT_UNKNOWN:
                detail = "IAM may be sent once" if kind is LineKind.IAM else "unknown command"
                self._events.append(Rejected(ErrorCode.UNKNOWN_COMMAND, detail))
            elif outcome is Outcome.REJECT_SET:
                self._events.append(Rejected(ErrorCode.BAD_SET, "expected SET <key> <value>"))
            elif outcome is Outcome.FAIL:
                detail = "the first line must be IAM <name>"
                self._error = RemoteProtocolError(ErrorCode.BAD_IAM, detail)
                self._pieces = None
                return
        if run:
            self._events.append(Log(tuple(run), truncated))
