"""The TCP server on anyio: one task per connection feeding a ``logatron_core.Session``.

Every protocol decision is the core's; this module moves bytes. Strategy, for speed: a
connection reads with large receives (64 KiB) and hands each chunk to
``Session.receive_data`` at once, so the per-chunk overhead is spread over thousands of lines.
Replies (``PONG``/``ERR``) wait in the session (bounded by the core, which drops and counts
what a peer that never reads would pile up) and are written by a per-connection writer task, so
such a peer can neither slow its own reader nor anyone else.

Retention: one task sleeps until the registry's next deadline (``Registry.next_deadline``), and
is woken early whenever a connection closes (a newly retained client may bring it forward).

Shutdown: cancelling ``serve()`` closes every connection; each one's session is ended with
``receive_data(b"", now)`` so its ``ClientClosed`` event is delivered, whatever the reason the
connection ended.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import anyio.abc

from logatron_core import (
    MAX_LINE_BYTES,
    ErrorReply,
    Identified,
    Registry,
    Session,
    SessionEvent,
)

from ._accept import serve_listener
from ._stream import EventStream

__all__ = ["LogatronServer", "StoreDriver"]

logger = logging.getLogger("logatron.server")

# Bytes asked for per receive: about a thousand typical lines, handed to the core at once so
# the per-chunk cost (a task switch, a clock read, a call into the core) is spread thin.
# Measured with benchmarks/bench_server.py: 64 KiB beats 256 KiB by ~15% on both backends
# (the chunk and the strings made from it stay in the CPU cache), and it keeps any one receive
# short, so a peer sending costly lines (a flood of unknown commands) never holds the event
# loop for long.
RECEIVE_BYTES = 64 * 1024

# How long a closing connection may take to flush its last replies (a fatal ERR) to a peer that
# does not read, before the socket is closed anyway.
CLOSE_GRACE_SECONDS = 2.0


class StoreDriver(Protocol):
    """What the server needs of a store that writes in the background (``--data-dir``)."""

    def pong_held(self) -> None:
        """A session holds a ``PONG`` until its lines are stored: store them soon."""

    async def wait_writable(self) -> None:
        """Return once the store accepts more (at once unless its writes are failing)."""


class _Writer:
    """A connection's writer task: writes the session's replies (bounded in the core) as they
    come, and the last ones once the reader is done, within a grace period."""

    __slots__ = ("_finished", "_session", "_wakeup", "stop_reading")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._wakeup = anyio.Event()
        self._finished = False
        # Ends the reader when the session was closed outside it (a claim a shared store
        # refused late): the fatal ERR written, the connection ends.
        self.stop_reading: Callable[[], object] | None = None

    def wake(self) -> None:
        """Replies are waiting (or the reader is done)."""
        self._wakeup.set()

    def finish(self) -> None:
        """No more replies will come: write what waits, then end."""
        self._finished = True
        self._wakeup.set()

    async def run(self, stream: anyio.abc.SocketStream) -> None:
        """Until finished and nothing is left to write (PONGs still held by the store
        included); the connection's handler bounds the wait after the reader is done."""
        session = self._session
        while True:
            data = session.data_to_send()
            if data:
                try:
                    await stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return  # the peer is gone; the reader will see it too
                continue  # more may have come meanwhile
            if session.closed and self.stop_reading is not None:
                self.stop_reading()
            if self._finished and not session.pongs_held:
                return
            await self._wakeup.wait()
            self._wakeup = anyio.Event()


def _format_address(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LogatronServer:
    """The Logatron TCP server on anyio (asyncio or trio).

    ``port=0`` picks an ephemeral port; once ``serve()`` has started (``await
    tg.start(server.serve)``), ``port`` and ``address`` hold the real ones. ``registry`` is
    shared by every connection (a new default one if not given); ``clock`` gives the timestamps.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2212,
        *,
        registry: Registry | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        clock: Callable[[], float] = time.time,
        store_driver: StoreDriver | None = None,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, not {max_line_bytes}")
        self.host = host
        self.port = port
        self.registry = registry if registry is not None else Registry()
        self.max_line_bytes = max_line_bytes
        self.clock = clock
        self.address: tuple[str, int] = (host, port)
        self.store_driver = store_driver
        self._retention_changed: anyio.Event | None = None

    def events(self, max_queue: int = 1000, *, client: str | None = None) -> EventStream:
        """Registry events from now on (of every client, or ``client``'s), through a queue of
        ``max_queue`` lines (see EventStream).

        Use as ``async with server.events() as events: async for event in events: ...``.
        Raises ValueError for ``max_queue`` below 1.
        """
        return EventStream(self.registry, max_queue, client=client)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled, then close every connection.

        Reports ``address`` (host, port) through ``task_status`` once listening. Raises OSError
        when it cannot listen (address in use, unknown host). Never returns otherwise.
        """
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener, anyio.create_task_group() as tg:
            bound = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_address)
            assert isinstance(bound, tuple)
            self.address = (str(bound[0]), int(bound[1]))
            self.port = self.address[1]
            self._retention_changed = anyio.Event()
            tg.start_soon(serve_listener, listener, self._handle, logger)
            tg.start_soon(self._expire_at_deadlines)
            logger.info(
                "listening on %s",
                _format_address(self.address),
                extra={"event": "listening", "address": _format_address(self.address)},
            )
            task_status.started(self.address)

    async def _expire_at_deadlines(self) -> None:
        """Sleep until the registry's next deadline (or a connection closes), then expire."""
        registry = self.registry
        while True:
            deadline = registry.next_deadline()
            delay = math.inf if deadline is None else max(0.0, deadline - self.clock())
            changed = self._retention_changed = anyio.Event()
            with anyio.move_on_after(delay):
                await changed.wait()
            registry.expire(self.clock())

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        session = Session(self.registry, max_line_bytes=self.max_line_bytes)
        peer = "?"
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            try:
                peer = _format_address(raw.getpeername())
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer is gone already: the first receive will say so
            writer = _Writer(session)
            session.on_replies = writer.wake  # PONGs released by the store's confirmation
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run, stream)
                try:
                    with anyio.CancelScope() as reading:
                        writer.stop_reading = reading.cancel
                        await self._read_loop(stream, session, writer, peer)
                finally:
                    writer.finish()
                # The writer flushes the last replies (a fatal ERR), within a grace period.
                tg.cancel_scope.deadline = anyio.current_time() + CLOSE_GRACE_SECONDS
        except Exception as error:  # a bug here must never take the whole server down
            logger.exception(
                "connection from %s failed",
                peer,
                extra={"event": "connection-failed", "peer": peer, "error": repr(error)},
            )
        finally:
            if not session.closed:
                try:
                    session.receive_data(b"", self.clock())
                except Exception as error:
                    logger.exception(
                        "closing the session of %s failed",
                        peer,
                        extra={"event": "connection-failed", "peer": peer, "error": repr(error)},
                    )
            if self._retention_changed is not None:
                self._retention_changed.set()
            if session.name is not None:
                logger.info(
                    "client %s disconnected (%s)",
                    session.name,
                    peer,
                    extra={"event": "client-closed", "client": session.name, "peer": peer},
                )
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_loop(
        self, stream: anyio.abc.SocketStream, session: Session, writer: _Writer, peer: str
    ) -> None:
        receive = stream.receive
        feed = session.receive_data
        clock = self.clock
        registry, driver = self.registry, self.store_driver
        while True:
            if driver is not None:
                await driver.wait_writable()  # back-pressure while the store cannot write
            try:
                data = await receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            events = feed(data, clock())
            if events:
                _log_session_events(events, session.name, peer)
            if session.has_replies:
                writer.wake()
            if driver is not None and registry.pongs_waiting:
                driver.pong_held()
            if session.closed or not data:
                return


def _log_session_events(events: Sequence[SessionEvent], name: str | None, peer: str) -> None:
    """One record for the IAM, one per chunk for its errors (a flooding peer must not flood
    the log)."""
    errors = [event for event in events if isinstance(event, ErrorReply)]
    for event in events:
        if isinstance(event, Identified):
            logger.info(
                "client %s connected (%s)",
                event.name,
                peer,
                extra={"event": "client-ready", "client": event.name, "peer": peer},
            )
    if not errors or not logger.isEnabledFor(logging.INFO):
        return
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    logger.info(
        "%s: ERR %s %s%s",
        name or peer,
        first.code.value,
        first.text,
        more,
        extra={
            "event": "error-reply",
            "client": name,
            "peer": peer,
            "code": first.code.value,
            "count": len(errors),
        },
    )
