"""The client side of a connection: events in, bytes out; server replies parsed back.

``send(event)`` validates first and changes nothing when it refuses (LocalProtocolError).
A message can never inject a command: each of its lines goes out as its own ``LOG`` line.

The client's policy lives here too, so every transport's client behaves alike:
:meth:`ClientConnection.ping` hands out a fresh token, :meth:`ClientConnection.handle_replies`
turns the parsed replies into state — which ``PING`` tokens are answered (``pong_received``),
the server's refusal (a fatal ``ERR``: ``refusal``), the latest non-fatal errors (``errors``,
at most ``MAX_KEPT_ERRORS``) and whether the server closed (``server_closed``).
"""

import itertools
import re
from collections import deque
from enum import Enum

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError, ServerRefused
from ._events import (
    NEED_DATA,
    ClientEvent,
    ConnectionClosed,
    ErrorReply,
    Identify,
    Log,
    NeedData,
    Ping,
    Pong,
    SetState,
)
from ._framing import LineBuffer, Piece
from ._limits import MAX_KEPT_ERRORS
from ._wire import TRIM, encode_line, is_valid_name, single_line, split_command

__all__ = ["ClientConnection", "ClientState", "split_message"]

# Replies are short; a longer line from a server is cut (and still parsed).
_MAX_REPLY_BYTES = 4096
_LINE_BREAK_RE = re.compile(r"\r?\n")


def split_message(message: str) -> list[str]:
    """The lines a message is sent as: one per line of its text (``\\n`` or ``\\r\\n``)."""
    return _LINE_BREAK_RE.split(message)


class ClientState(Enum):
    AWAIT_IAM = "await-iam"
    IDENTIFIED = "identified"


class ClientConnection:
    """Protocol state of one connection, seen from the client."""

    __slots__ = (
        "_answered",
        "_awaited",
        "_events",
        "_framer",
        "_input_ended",
        "_pieces",
        "_tokens",
        "errors",
        "refusal",
        "server_closed",
        "state",
    )

    def __init__(self) -> None:
        self._framer = LineBuffer(_MAX_REPLY_BYTES)
        self._pieces: deque[Piece] = deque()
        self._events: deque[ClientEvent] = deque()
        self._input_ended = False
        self._tokens = itertools.count(1)
        self._awaited: set[str] = set()  # PING tokens sent and not yet answered
        self._answered: set[str] = set()
        self.state = ClientState.AWAIT_IAM
        self.errors: deque[ErrorReply] = deque(maxlen=MAX_KEPT_ERRORS)
        self.refusal: ServerRefused | None = None  # the server's fatal ERR, once received
        self.server_closed = False  # the server ended the connection

    def ping(self) -> tuple[str, bytes]:
        """A ``PING`` with a fresh token: (the token, the bytes to send). Raises
        LocalProtocolError before ``IAM``. See :meth:`pong_received`."""
        token = str(next(self._tokens))
        data = self.send(Ping(token))
        self._awaited.add(token)
        return token, data

    def pong_received(self, token: str) -> bool:
        """True (once) when the ``PONG`` for ``token`` has been handled: every line sent
        before its ``PING`` was applied by the server."""
        if token in self._answered:
            self._answered.discard(token)
            return True
        return False

    def forget_ping(self, token: str) -> None:
        """Stop waiting for ``token``'s ``PONG`` (after a timeout)."""
        self._awaited.discard(token)
        self._answered.discard(token)

    def handle_replies(self) -> None:
        """Apply every reply parsed so far to the client's state (see the module comment).

        Raises RemoteProtocolError for a reply that is neither ``PONG`` nor a known ``ERR``.
        """
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, Pong):
                if event.token in self._awaited:
                    self._awaited.discard(event.token)
                    self._answered.add(event.token)
            elif isinstance(event, ErrorReply):
                if event.code.fatal:
                    self.refusal = ServerRefused(event.code, event.text)
                else:
                    self.errors.append(event)
            else:
                self.server_closed = True
                return

    def send(self, event: Identify | Log | SetState | Ping) -> bytes:
        """The bytes for ``event``. Raises LocalProtocolError (nothing changes) when the name or
        key is invalid, a value or token holds a line break, ``IAM`` is not first or is sent
        twice.
        """
        if isinstance(event, Identify):
            if self.state is not ClientState.AWAIT_IAM:
                raise LocalProtocolError("IAM may be sent once per connection")
            if not is_valid_name(event.name):
                raise LocalProtocolError(f"invalid client name: {event.name!r}")
            self.state = ClientState.IDENTIFIED
            return encode_line("IAM", event.name)
        if self.state is not ClientState.IDENTIFIED:
            raise LocalProtocolError("IAM must be sent first")
        if isinstance(event, Log):
            return b"".join(
                encode_line("LOG", line)
                for message in event.messages
                for line in split_message(message)
            )
        if isinstance(event, SetState):
            if not is_valid_name(event.key):
                raise LocalProtocolError(f"invalid state key: {event.key!r}")
            return encode_line("SET", f"{event.key} {single_line(event.value, 'a value')}")
        return encode_line("PING", single_line(event.token, "a PING token"))

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the server; ``b""`` means it closed. RuntimeError after that."""
        if self._input_ended:
            raise RuntimeError("received data after end of input")
        if data:
            self._pieces.extend(self._framer.feed(data))
        else:
            self._input_ended = True
            self._pieces.extend(self._framer.close())

    def next_event(self) -> ClientEvent | NeedData:
        """The next reply, ``NEED_DATA``, or ``ConnectionClosed`` after end of input.

        Raises RemoteProtocolError for a line that is neither ``PONG`` nor a known ``ERR``.
        """
        while not self._events:
            if not self._pieces:
                return ConnectionClosed() if self._input_ended else NEED_DATA
            data, truncated = self._pieces.popleft()
            text = data.decode("utf-8", "replace")
            lines = [text] if truncated else text[:-1].split("\n")
            for line in lines:
                self._events.append(_parse_reply(line.removesuffix("\r")))
        return self._events.popleft()


def _parse_reply(line: str) -> Pong | ErrorReply:
    command, rest = split_command(line)
    argument = rest.lstrip(TRIM)
    if command == "PONG":
        return Pong(argument)
    if command == "ERR":
        code, text = split_command(argument)
        try:
            return ErrorReply(ErrorCode(code), text.lstrip(TRIM))
        except ValueError:
            pass
    raise RemoteProtocolError(None, f"unexpected reply from the server: {line[:80]!r}")
