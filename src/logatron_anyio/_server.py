"""The TCP server on anyio: one task per connection feeding a ``logatron_core.Session``.

Every protocol decision is the core's; this module moves bytes. Strategy, for speed: a
connection reads with large receives (64 KiB) and hands each chunk to
``Session.receive_data`` at once, so the per-chunk overhead is spread over thousands of lines.
Replies (``PONG``/``ERR``) wait in the session (bounded by the core, which drops and counts
what a peer that never reads would pile up) and are written by a writer task of their own, so
such a peer can neither slow its own reader nor anyone else.

Memory, for fleets of mostly idle clients: a connection holds its task, its session and a
small ``_Connection``, nothing more while it waits for bytes: no task group of its own, no
chunk kept from one receive to the next, and a writer task only while replies wait to be
written (started when a reply comes, ended once it is written).

TLS (``ssl_context``): each connection's handshake runs in its own task, bounded by
``handshake_timeout``, before its session starts (``_tls``); the names of a verified client
certificate go to the session, which decides with ``authorizer`` who may identify as what.

Retention: one task sleeps until the registry's next deadline (``Registry.next_deadline``), and
is woken early whenever a connection closes (a newly retained client may bring it forward).

Shutdown: cancelling ``serve()`` closes every connection; each one's session is ended with
``receive_data(b"", now)`` so its ``ClientClosed`` event is delivered, whatever the reason the
connection ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc

from logatron_core import (
    MAX_LINE_BYTES,
    Authorizer,
    ErrorCode,
    ErrorReply,
    Identified,
    Registry,
    Session,
    SessionEvent,
)

from ._accept import serve_listener
from ._stream import EventStream
from ._tls import HANDSHAKE_TIMEOUT_SECONDS, peer_names_of, tls_handler

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


class _Connection:
    """What one connection keeps between receives: its session, its stream, its peer, and the
    cancel scope of its writer task while one runs (None otherwise)."""

    __slots__ = ("_ended", "_spawn", "_writing", "peer", "session", "stream")

    def __init__(
        self,
        session: Session,
        stream: anyio.abc.ByteStream,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
    ) -> None:
        self.session = session
        self.stream = stream
        self.peer = "?"
        self._spawn = spawn
        self._writing: anyio.CancelScope | None = None
        self._ended: anyio.Event | None = None  # set when the writer ends, if one waits

    def wake(self) -> None:
        """Replies wait in the session: start the writer task unless it runs."""
        if self._writing is None:
            self._writing = anyio.CancelScope()
            self._spawn(self._write)

    __call__ = wake  # the session's on_replies (no bound method kept per connection)

    async def _write(self) -> None:
        """The writer task: write the replies as they come; end once none waits."""
        scope = self._writing
        assert scope is not None
        try:
            with scope:
                await self._send_waiting()
            if self.session.closed:
                # Closed outside the reader (a claim a shared store refused late): its fatal
                # ERR written, the reader's receive ends as if the peer had closed.
                raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RD)
        except Exception as error:  # a bug here must never take the whole server down
            _log_failure("writing to %s failed", self.peer, error)
        finally:
            self._writing = None
            if self._ended is not None:
                self._ended.set()

    async def flush(self) -> None:
        """Wait for the writer, then write the replies still waiting (a fatal ``ERR``), and
        the ``PONG``s a store still holds once it releases them (a peer may half-close after
        its ``PING``); the caller bounds the wait."""
        while True:
            if self._writing is not None:
                self._ended = anyio.Event()
                await self._ended.wait()
            await self._send_waiting()
            if not self.session.pongs_held:
                return
            self._ended = anyio.Event()  # set by the writer that their release starts
            await self._ended.wait()

    async def _send_waiting(self) -> None:
        """Write what waits in the session, and what comes meanwhile, until nothing does."""
        try:
            while data := self.session.data_to_send():
                await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the peer is gone; the reader will see it too

    def stop_writing(self) -> None:
        if self._writing is not None:
            self._writing.cancel()


def _format_address(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LogatronServer:
    """The Logatron TCP server on anyio (asyncio or trio).

    ``port=0`` picks an ephemeral port; once ``serve()`` has started (``await
    tg.start(server.serve)``), ``port`` and ``address`` hold the real ones. ``registry`` is
    shared by every connection (a new default one if not given); ``clock`` gives the timestamps.
    ``store_driver``: a store that writes in the background (``--data-dir``), told when a
    ``PONG`` waits for it and waited for while its writes fail (back-pressure). With
    ``ssl_context`` (see ``logatron_sync._tls.server_context``) clients connect over TLS and
    have ``handshake_timeout`` seconds to complete the handshake; ``authorizer`` decides which
    names they may identify as (anyone as anything by default).
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
        ssl_context: ssl.SSLContext | None = None,
        authorizer: Authorizer | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
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
        self.ssl_context = ssl_context
        self.authorizer = authorizer if authorizer is not None else Authorizer()
        self.handshake_timeout = handshake_timeout
        self._retention_changed: anyio.Event | None = None
        # Starts a task in serve()'s task group (where writer tasks run), made once: shared.
        self._spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object] | None = None

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
            self._spawn = tg.start_soon
            handle = (
                self._handle
                if self.ssl_context is None
                else tls_handler(self._handle, self.ssl_context, logger, self.handshake_timeout)
            )
            tg.start_soon(serve_listener, listener, handle, logger)
            tg.start_soon(self._expire_at_deadlines)
            tls = self.ssl_context is not None
            logger.info(
                "listening on %s%s",
                _format_address(self.address),
                " (TLS)" if tls else "",
                extra={"event": "listening", "address": _format_address(self.address), "tls": tls},
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

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        session = Session(
            self.registry,
            max_line_bytes=self.max_line_bytes,
            authorizer=self.authorizer,
            certificate_names=peer_names_of(stream),
        )
        assert self._spawn is not None
        connection = _Connection(session, stream, self._spawn)
        session.on_replies = connection  # PONGs released later (a durable store): write them
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            try:
                connection.peer = _format_address(raw.getpeername())
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer is gone already: the first receive will say so
            # Until the session closes (the peer closed, the connection broke, a fatal error);
            # written so that no chunk (nor bound method) stays referenced while the next
            # receive waits.
            registry, driver = self.registry, self.store_driver
            while not session.closed:
                if driver is not None:
                    await driver.wait_writable()  # back-pressure while the store cannot write
                try:
                    events = session.receive_data(await stream.receive(RECEIVE_BYTES), self.clock())
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    events = session.receive_data(b"", self.clock())
                if events:
                    _log_session_events(events, session.name, connection.peer)
                    events = ()  # not kept while the next receive waits
                if session.has_replies:
                    connection.wake()
                if driver is not None and registry.pongs_waiting:
                    driver.pong_held()
        except Exception as error:  # a bug here must never take the whole server down
            _log_failure("connection from %s failed", connection.peer, error)
        finally:
            try:
                self._closed(connection)
                # The last replies (a fatal ERR) are written within a grace period.
                with anyio.move_on_after(CLOSE_GRACE_SECONDS):
                    await connection.flush()
            finally:
                connection.stop_writing()
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

    def _closed(self, connection: _Connection) -> None:
        """The session ends (its client's ``close`` is delivered) and the retention task is
        told."""
        session, peer = connection.session, connection.peer
        if not session.closed:
            try:
                session.receive_data(b"", self.clock())
            except Exception as error:
                _log_failure("closing the session of %s failed", peer, error)
        if self._retention_changed is not None:
            self._retention_changed.set()
        if session.name is not None:
            logger.info(
                "client %s disconnected (%s)",
                session.name,
                peer,
                extra={"event": "client-closed", "client": session.name, "peer": peer},
            )


def _log_failure(text: str, peer: str, error: Exception) -> None:
    """A failure around one connection (``text`` names it with ``%s`` for the peer)."""
    logger.exception(
        text, peer, extra={"event": "connection-failed", "peer": peer, "error": repr(error)}
    )


def _log_session_events(events: Sequence[SessionEvent], name: str | None, peer: str) -> None:
    """One record for the IAM, one per chunk for its errors (a flooding peer must not flood
    the log); a refused identity (``unauthorized``) is a warning, with the peer's address."""
    errors = [event for event in events if isinstance(event, ErrorReply)]
    refused = any(error.code is ErrorCode.UNAUTHORIZED for error in errors)
    for event in events:
        if isinstance(event, Identified):
            logger.info(
                "client %s connected (%s)",
                event.name,
                peer,
                extra={"event": "client-ready", "client": event.name, "peer": peer},
            )
    level = logging.WARNING if refused else logging.INFO
    if not errors or not logger.isEnabledFor(level):
        return
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    logger.log(
        level,
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
