"""Logatron on blocking sockets: a selectors server, a client and a logging handler.

Every protocol decision lives in :mod:`logatron_core`; this package only moves bytes between
sockets and the core's :class:`~logatron_core.Session` and :class:`~logatron_core.ClientConnection`.
"""

from ._client import LogatronClient, ServerRefused
from ._handler import HandlerStats, LogatronHandler
from ._server import LogatronServer

__all__ = (
    "HandlerStats",
    "LogatronClient",
    "LogatronHandler",
    "LogatronServer",
    "ServerRefused",
)
