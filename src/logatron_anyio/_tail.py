"""The WebSocket tail: backlog after a cursor, ``current``, then live events.

The seam between backlog and live is exact because nothing can run between the two steps:
the tail subscribes to the registry and takes its backlog snapshot in one synchronous stretch,
so every line is either in the snapshot (``seq`` at most the snapshot's newest) or delivered
live afterwards, never both and never neither.

Ingest never waits for a tail: its subscriber is an :class:`EventStream`, a queue bounded in
*lines*; past the bound, lines are dropped and counted, and the reader gets one
``{"type": "lagged", "missed": N}`` in their place. One task turns queued events into JSON and
WebSocket frames and writes them; another reads the peer's frames (pongs, close).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from logatron_core import Registry

from ._api import entry_json, event_json
from ._server import EventStream, Lagged

__all__ = [
    "DEFAULT_TAIL_QUEUE_LINES",
    "PING_INTERVAL_SECONDS",
    "TailOptions",
    "run_tail",
]

# Lines queued for one tail before it is told it lagged. At ~200 bytes a line this bounds a
# stalled tail to a few MB; a live browser tab drains it in well under a second.
DEFAULT_TAIL_QUEUE_LINES = 10_000

# The server pings every tail this often and closes one that has not answered the previous
# ping (browsers answer pings by themselves). loggregator pinged every 30 s.
PING_INTERVAL_SECONDS = 20.0

# Frames joined into one socket write.
WRITE_BATCH_BYTES = 64 * 1024

# How long a closing tail may take to send its close frame to a peer that does not read.
CLOSE_GRACE_SECONDS = 1.0

RECEIVE_BYTES = 16 * 1024


class TailOptions:
    """Settings shared by every tail of one HTTP server."""

    __slots__ = ("lagged_total", "max_queue_lines", "ping_interval", "subscribers")

    def __init__(
        self,
        max_queue_lines: int = DEFAULT_TAIL_QUEUE_LINES,
        ping_interval: float = PING_INTERVAL_SECONDS,
    ) -> None:
        if max_queue_lines < 1:
            raise ValueError("max_queue_lines must be at least 1")
        self.max_queue_lines = max_queue_lines
        self.ping_interval = ping_interval
        self.lagged_total = 0  # lines dropped across every tail, for /metrics
        self.subscribers = 0  # open tails

    def count_dropped(self, lines: int) -> None:
        self.lagged_total += lines


def _frame(ws: WSConnection, message: dict[str, Any]) -> bytes:
    return ws.send(TextMessage(data=json.dumps(message, ensure_ascii=False)))


class _Tail:
    """One open tail: its WebSocket, its queue and its three tasks."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        ws: WSConnection,
        options: TailOptions,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.options = options
        self.send_lock = anyio.Lock()
        self.awaiting_pong = False
        self.close: tuple[int, str] | None = None  # why the tail ends

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            await self.stream.send(data)

    async def send_messages(self, messages: list[dict[str, Any]]) -> None:
        batch: list[bytes] = []
        size = 0
        for message in messages:
            frame = _frame(self.ws, message)
            batch.append(frame)
            size += len(frame)
            if size >= WRITE_BATCH_BYTES:
                await self.send(b"".join(batch))
                batch, size = [], 0
        if batch:
            await self.send(b"".join(batch))

    async def write_live(self, events: EventStream) -> None:
        while True:
            await events.wait()
            messages: list[dict[str, Any]] = []
            for item in events.drain():
                if isinstance(item, Lagged):
                    messages.append({"type": "lagged", "missed": item.missed})
                else:
                    messages.extend(event_json(item))
            await self.send_messages(messages)

    async def read(self, done: Callable[[tuple[int, str]], None]) -> None:
        while True:
            try:
                data: bytes | None = await self.stream.receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = None
            self.ws.receive_data(data)
            for event in self.ws.events():
                await self.on_event(event, done)
            if data is None:
                done((1006, "connection lost"))
                return

    async def on_event(self, event: Event, done: Callable[[tuple[int, str]], None]) -> None:
        if isinstance(event, Ping):
            await self.send(self.ws.send(event.response()))
        elif isinstance(event, Pong):
            self.awaiting_pong = False
        elif isinstance(event, CloseConnection):
            # The peer closed, or wsproto found a protocol violation (code 1002): answer with
            # the same code and reason.
            if self.ws.state is not ConnectionState.CLOSED:
                await self.send(self.ws.send(event.response()))
            done((event.code, event.reason or ""))
        # Messages from the peer carry nothing for a tail: they are read and dropped.

    async def ping(self, done: Callable[[tuple[int, str]], None]) -> None:
        while True:
            await anyio.sleep(self.options.ping_interval)
            if self.awaiting_pong:
                done((1011, f"no pong within {self.options.ping_interval:g} s"))
                return
            self.awaiting_pong = True
            await self.send(self.ws.send(Ping(b"logatron")))

    async def say_goodbye(self) -> None:
        """Send our close frame (best effort, bounded in time) if the peer has not closed."""
        code, reason = self.close or (1001, "server shutting down")
        if self.ws.state is not ConnectionState.OPEN:
            return
        with anyio.move_on_after(CLOSE_GRACE_SECONDS, shield=True):
            try:
                await self.send(self.ws.send(CloseConnection(code=code, reason=reason)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass


async def run_tail(
    stream: anyio.abc.ByteStream,
    ws: WSConnection,
    registry: Registry,
    *,
    client: str | None,
    since: int | None,
    options: TailOptions,
) -> None:
    """Serve one accepted WebSocket tail until the peer leaves or the task is cancelled.

    ``since`` None means the whole buffered backlog without a gap notice. Every way out sends a
    close frame with a code and a reason when the connection still allows it.
    """
    tail = _Tail(stream, ws, options)
    events = EventStream(
        registry, options.max_queue_lines, client=client, on_drop=options.count_dropped
    )
    options.subscribers += 1
    try:
        # Snapshot right after subscribing, with no await in between: the seam is exact.
        cursor = since or 0
        backlog = registry.recent(cursor, client)
        missed = registry.missed_since(cursor, client) if since is not None else 0
        current = registry.last_seq
        first: list[dict[str, Any]] = [{"type": "gap", "missed": missed}] if missed else []
        first.extend({"type": "log", **entry_json(entry)} for entry in backlog)
        first.append({"type": "current", "last_seq": current})
        async with anyio.create_task_group() as tg:

            def done(reason: tuple[int, str]) -> None:
                if tail.close is None:
                    tail.close = reason
                tg.cancel_scope.cancel()

            tg.start_soon(tail.read, done)
            tg.start_soon(tail.ping, done)
            try:
                await tail.send_messages(first)
                await tail.write_live(events)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                done((1006, "connection lost"))
    finally:
        events.close()
        options.subscribers -= 1
        await tail.say_goodbye()
