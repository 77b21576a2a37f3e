"""Accepting connections in a way that no accept() failure can end a server.

anyio's ``Listener.serve()`` re-raises an ``OSError`` from ``accept()``: running out of file
descriptors (EMFILE) would end the whole server and lose every stored line. Here such a failure
is logged (once per burst) and accept is retried after a pause, while the open connections go
on being served.

This module also holds a workaround for anyio 4.x on asyncio: a ``SocketStream`` whose first
``receive()`` finds data already queued never pauses its transport, so asyncio keeps reading
the socket into memory as fast as the peer sends, without bound. Pausing the transport at
accept makes every ``receive()`` resume and pause it again, so the kernel's flow control holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

__all__ = ["ACCEPT_RETRY_SECONDS", "serve_listener"]

# Pause after an accept() failure (out of file descriptors, ...) before accepting again.
ACCEPT_RETRY_SECONDS = 0.1


def _pause_reading(stream: anyio.abc.SocketStream) -> None:
    """See the module comment; a no-op on trio, whose streams read only when asked."""
    transport = getattr(stream, "_transport", None)
    pause = getattr(transport, "pause_reading", None)
    if pause is not None:
        pause()


async def serve_listener(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    handle: Callable[[anyio.abc.SocketStream], Coroutine[Any, Any, None]],
    log: logging.Logger,
) -> None:
    """Accept connections on ``listener`` (each of a MultiListener's) until cancelled, each
    served by ``handle`` in its own task. Never raises for a failed accept()."""
    listeners: list[anyio.abc.SocketListener] = getattr(listener, "listeners", [listener])
    async with anyio.create_task_group() as tg:
        for one in listeners:
            tg.start_soon(_accept_forever, one, handle, tg, log)


async def _accept_forever(
    listener: anyio.abc.SocketListener,
    handle: Callable[[anyio.abc.SocketStream], Coroutine[Any, Any, None]],
    tg: anyio.abc.TaskGroup,
    log: logging.Logger,
) -> None:
    failing = False
    while True:
        try:
            stream = await listener.accept()
        except OSError as error:  # out of file descriptors, connection aborted...
            if not failing:
                log.warning(
                    "accept failed (retrying every %g s): %s",
                    ACCEPT_RETRY_SECONDS,
                    error,
                    extra={"event": "accept-failed", "error": str(error)},
                )
            failing = True
            await anyio.sleep(ACCEPT_RETRY_SECONDS)
            continue
        failing = False
        _pause_reading(stream)
        tg.start_soon(handle, stream)
