"""Logatron on anyio (asyncio and trio): the TCP server, the async client, the command.

Thin: every protocol decision lives in ``logatron_core``.
"""

from ._client import ConnectionLost, LogatronClient, ServerRefused, connect
from ._server import EventStream, Lagged, LogatronServer

__all__ = (
    "ConnectionLost",
    "EventStream",
    "Lagged",
    "LogatronClient",
    "LogatronServer",
    "ServerRefused",
    "connect",
)
