"""logatron_core: the sans-IO heart of Logatron.

Bytes in, events out, bytes back; no sockets, threads, event loops or clock reads (every call
that needs the time takes ``now``). Adapters drive a :class:`Session` per connection against one
shared :class:`Registry`; clients use :class:`ClientConnection` to encode what they send.
"""

from ._client import ClientConnection, ClientState, split_message
from ._connection import ConnectionState, ServerConnection
from ._errors import (
    ErrorCode,
    LocalProtocolError,
    LogatronError,
    NameTaken,
    NoSuchClient,
    RegistryRefusal,
    RemoteProtocolError,
    ServerRefused,
    TooManyClients,
    TooManyKeys,
)
from ._events import (
    NEED_DATA,
    ClientClosed,
    ClientEvent,
    ClientReady,
    ConnectionClosed,
    ErrorReply,
    Identify,
    Log,
    LogEntry,
    Logged,
    NeedData,
    Ping,
    Pong,
    RegistryEvent,
    Rejected,
    ServerEvent,
    SetState,
    StateSet,
)
from ._framing import LineBuffer
from ._limits import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
    MAX_ERROR_REPLIES_PER_RECEIVE,
    MAX_LINE_BYTES,
    MAX_NAME_LENGTH,
    MAX_PENDING_REPLY_BYTES,
)
from ._registry import ClientHandle, ClientInfo, Registry, RegistryStats, Subscriber
from ._session import Session
from ._wire import is_valid_name

__all__ = (
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_RETAINED",
    "DEFAULT_MAX_STATE_KEYS",
    "DEFAULT_RETENTION_SECONDS",
    "MAX_ERROR_REPLIES_PER_RECEIVE",
    "MAX_LINE_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_PENDING_REPLY_BYTES",
    "NEED_DATA",
    "ClientClosed",
    "ClientConnection",
    "ClientEvent",
    "ClientHandle",
    "ClientInfo",
    "ClientReady",
    "ClientState",
    "ConnectionClosed",
    "ConnectionState",
    "ErrorCode",
    "ErrorReply",
    "Identify",
    "LineBuffer",
    "LocalProtocolError",
    "Log",
    "LogEntry",
    "LogatronError",
    "Logged",
    "NameTaken",
    "NeedData",
    "NoSuchClient",
    "Ping",
    "Pong",
    "Registry",
    "RegistryEvent",
    "RegistryRefusal",
    "RegistryStats",
    "Rejected",
    "RemoteProtocolError",
    "ServerConnection",
    "ServerEvent",
    "ServerRefused",
    "Session",
    "SetState",
    "StateSet",
    "Subscriber",
    "TooManyClients",
    "TooManyKeys",
    "is_valid_name",
    "split_message",
)
