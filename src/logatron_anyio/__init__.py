"""Logatron on anyio (asyncio and trio): the TCP server, the async client, the HTTP and
WebSocket interface, the consumer library and the ``logatron`` command.

Thin: every protocol decision lives in ``logatron_core``.
"""

from ._client import ConnectionLost, LogatronClient, ServerRefused, connect
from ._consumer import Consumer
from ._decode import (
    BadResponse,
    ConsumerError,
    Current,
    Gap,
    NotFound,
    TailEvent,
    Unauthorized,
    Unreachable,
    sort_entries,
)
from ._http import HttpServer
from ._server import LogatronServer
from ._stream import EventStream, Lagged
from ._tail import TailOptions

__all__ = (
    "BadResponse",
    "ConnectionLost",
    "Consumer",
    "ConsumerError",
    "Current",
    "EventStream",
    "Gap",
    "HttpServer",
    "Lagged",
    "LogatronClient",
    "LogatronServer",
    "NotFound",
    "ServerRefused",
    "TailEvent",
    "TailOptions",
    "Unauthorized",
    "Unreachable",
    "connect",
    "sort_entries",
)
