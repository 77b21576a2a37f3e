"""Event objects: what a connection parses out of the wire and what the registry announces.

All events are immutable. One :class:`Log` event carries a whole run of consecutive ``LOG``
lines that arrived together, and one :class:`Logged` event announces the whole run: the per-line
cost of an object would otherwise cap the server's throughput (see STYLE.md). For the same
reason their ``messages`` are a read-only sequence that may be a :class:`~logatron_core.Lines`:
the bytes the lines arrived in, parsed only when read.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ._errors import ErrorCode

__all__ = [
    "NEED_DATA",
    "ClientClosed",
    "ClientEvent",
    "ClientExpired",
    "ClientReady",
    "ConnectionClosed",
    "ErrorReply",
    "Identified",
    "Identify",
    "Log",
    "LogEntry",
    "Logged",
    "NeedData",
    "Ping",
    "Pong",
    "RegistryEvent",
    "Rejected",
    "ServerEvent",
    "SessionEvent",
    "SetState",
    "StateSet",
]


class NeedData(Enum):
    """Sentinel returned by ``next_event()`` when more bytes are needed."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


# -- wire events: client -> server -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identify:
    """``IAM <name>``: the first line of every connection."""

    name: str


@dataclass(frozen=True, slots=True)
class Log:
    """A run of ``LOG`` lines, oldest first (a tuple, or the :class:`~logatron_core.Lines` they
    arrived in).

    ``truncated`` is true when the (single) message was cut at the line limit. A client sending
    a ``Log`` may put line breaks inside a message: each line becomes its own ``LOG`` line.
    """

    messages: Sequence[str]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class SetState:
    """``SET <key> <value>``."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Ping:
    """``PING [token]``: answered with ``PONG [token]`` once every earlier line is applied."""

    token: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line the server refuses without closing: it answers ``ERR <code> <detail>``.

    For ``LINE_TOO_LONG`` the line itself follows as its usual event, cut to the limit.
    """

    code: ErrorCode
    detail: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer ended its side of the connection; no event follows."""


# -- wire events: server -> client -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pong:
    """``PONG [token]``: every line sent before the matching ``PING`` has been applied."""

    token: str = ""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``ERR <code> <text>`` from the server; fatal codes are followed by the server closing."""

    code: ErrorCode
    text: str


ServerEvent = Identify | Log | SetState | Ping | Rejected | ConnectionClosed
ClientEvent = Pong | ErrorReply | ConnectionClosed


# -- what a session tells its adapter ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identified:
    """The peer identified itself as ``name`` and the registry accepted it."""

    name: str


# What ``Session.receive_data`` reports (the ErrorReply events are the ERR lines answered), so
# adapters log without parsing the reply bytes.
SessionEvent = Identified | ErrorReply


# -- stored data and registry events -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored log line: ``seq`` is server-wide and never reused while the server runs."""

    client: str
    seq: int
    timestamp: float
    message: str
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ClientReady:
    """A client identified itself (new, or resuming its retained record)."""

    name: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class Logged:
    """A run of lines appended to ``name``'s log: seqs ``first_seq`` onward, one per message.

    ``messages`` is read-only, usually a :class:`~logatron_core.Lines` (``len()`` costs nothing;
    the messages are parsed on first access, once for every reader of the event).
    """

    name: str
    first_seq: int
    timestamp: float
    messages: Sequence[str]
    truncated: bool = False

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.messages) - 1

    def entries(self) -> list[LogEntry]:
        """The run as :class:`LogEntry` objects (built on demand: they cost time per line)."""
        return [
            LogEntry(self.name, seq, self.timestamp, message, self.truncated)
            for seq, message in enumerate(self.messages, self.first_seq)
        ]


@dataclass(frozen=True, slots=True)
class StateSet:
    """``name`` set state ``key`` to ``value``."""

    name: str
    key: str
    value: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """``name`` disconnected; its record is retained read-only or forgotten per the registry."""

    name: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class ClientExpired:
    """``name``'s retained record was forgotten (past the retention age or count)."""

    name: str
    timestamp: float


RegistryEvent = ClientReady | Logged | StateSet | ClientClosed | ClientExpired
