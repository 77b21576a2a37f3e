"""logatron_core: the sans-IO heart of Logatron.

Bytes in, events out, bytes back; no sockets, threads, event loops or clock reads (every call
that needs the time takes ``now``). Adapters drive a :class:`Session` per connection against one
shared :class:`Registry` (the policy) over a :class:`Store` (the data: a :class:`MemoryStore` by
default), with an :class:`Authorizer` deciding who may identify as which name and who may read;
adapters read through the :class:`LogSource` interface. Clients use
:class:`ClientConnection` to encode what they send and to follow the server's replies.
"""

from ._auth import Access, Authorizer, TokenGrant, certificate_names
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
    ClientExpired,
    ClientReady,
    ConnectionClosed,
    ErrorReply,
    Identified,
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
    SessionEvent,
    SetState,
    StateSet,
)
from ._framing import LineBuffer
from ._journal import Batch, Journal, rebuild
from ._limits import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
    MAX_ERROR_REPLIES_PER_RECEIVE,
    MAX_KEPT_ERRORS,
    MAX_LINE_BYTES,
    MAX_NAME_LENGTH,
    MAX_PENDING_REPLY_BYTES,
    MAX_TOKEN_LENGTH,
)
from ._lines import Lines
from ._memory import MemoryStore
from ._registry import Registry
from ._remote import Append, Claim, Release, RemoteRegistry, SetKey, decode_run, encode_run
from ._session import Session
from ._store import (
    ClientInfo,
    LogSource,
    RegistryStats,
    Snapshot,
    Store,
    StoredClient,
    StoredRun,
    StoreReader,
    Subscriber,
)
from ._wire import TOKEN_RULE, is_valid_name, is_valid_token

__all__ = (
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_RETAINED",
    "DEFAULT_MAX_STATE_KEYS",
    "DEFAULT_RETENTION_SECONDS",
    "MAX_ERROR_REPLIES_PER_RECEIVE",
    "MAX_KEPT_ERRORS",
    "MAX_LINE_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_PENDING_REPLY_BYTES",
    "MAX_TOKEN_LENGTH",
    "NEED_DATA",
    "TOKEN_RULE",
    "Access",
    "Append",
    "Authorizer",
    "Batch",
    "Claim",
    "ClientClosed",
    "ClientConnection",
    "ClientEvent",
    "ClientExpired",
    "ClientInfo",
    "ClientReady",
    "ClientState",
    "ConnectionClosed",
    "ConnectionState",
    "ErrorCode",
    "ErrorReply",
    "Identified",
    "Identify",
    "Journal",
    "LineBuffer",
    "Lines",
    "LocalProtocolError",
    "Log",
    "LogEntry",
    "LogSource",
    "LogatronError",
    "Logged",
    "MemoryStore",
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
    "Release",
    "RemoteProtocolError",
    "RemoteRegistry",
    "ServerConnection",
    "ServerEvent",
    "ServerRefused",
    "Session",
    "SessionEvent",
    "SetKey",
    "SetState",
    "Snapshot",
    "StateSet",
    "Store",
    "StoreReader",
    "StoredClient",
    "StoredRun",
    "Subscriber",
    "TokenGrant",
    "TooManyClients",
    "TooManyKeys",
    "certificate_names",
    "decode_run",
    "encode_run",
    "is_valid_name",
    "is_valid_token",
    "rebuild",
    "split_message",
)
