"""The TCP server on anyio: one task per connection feeding a ``logatron_core.Session``.

Every protocol decision is the core's; this module moves bytes. Strategy, for speed: a
connection reads with large receives (64 KiB) and hands each chunk to
``Session.receive_data`` at once, so the per-chunk overhead is spread over thousands of lines.
Replies (``PONG``/``ERR``) go through a per-connection writer task fed by a buffer bounded in
bytes (``MAX_PENDING_REPLY_BYTES``): a peer that never reads can neither slow its own reader nor
anyone else; past the bound its replies are dropped and counted in ``replies_dropped``.

Shutdown: cancelling ``serve()`` closes every connection; each one's session is ended with
``receive_data(b"", now)`` so its ``ClientClosed`` event is delivered, whatever the reason the
connection ended.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from logatron_core import (
    MAX_LINE_BYTES,
    MAX_PENDING_REPLY_BYTES,
    Registry,
    Session,
)

from ._accept import serve_listener
from ._stream import EventStream

__all__ = ["LogatronServer"]

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

# How often retained clients past their retention are forgotten.
EXPIRE_INTERVAL_SECONDS = 1.0


class _Replies:
    """The bounded buffer of reply bytes between a connection's reader and its writer task."""

    __slots__ = ("_receive", "_send", "_server", "pending")

    def __init__(self, server: LogatronServer) -> None:
        self._server = server
        self.pending = 0
        send, receive = anyio.create_memory_object_stream[bytes](float("inf"))
        self._send: MemoryObjectSendStream[bytes] = send
        self._receive: MemoryObjectReceiveStream[bytes] = receive

    def put(self, reply: bytes) -> None:
        """Queue ``reply`` (whole lines) without waiting; the lines past the bound are dropped
        and counted in the server's ``replies_dropped``."""
        room = MAX_PENDING_REPLY_BYTES - self.pending
        if len(reply) > room:
            cut = reply.rfind(b"\n", 0, room) + 1
            self._server.replies_dropped += reply.count(b"\n", cut)
            reply = reply[:cut]
            if not reply:
                return
        try:
            self._send.send_nowait(reply)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the writer gave up: the peer is gone
        self.pending += len(reply)

    def finish(self) -> None:
        """No more replies: the writer sends what is queued, then ends."""
        self._send.close()

    async def write_all(self, stream: anyio.abc.SocketStream) -> None:
        """The writer task: send queued replies, joined, until ``finish()`` or a broken peer."""
        receive = self._receive
        with receive:
            async for reply in receive:
                parts = [reply]
                while True:
                    try:
                        parts.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                    except anyio.EndOfStream:
                        break
                data = b"".join(parts)
                try:
                    await stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                finally:
                    self.pending -= len(data)


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
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, not {max_line_bytes}")
        self.host = host
        self.port = port
        self.registry = registry if registry is not None else Registry()
        self.max_line_bytes = max_line_bytes
        self.clock = clock
        self.address: tuple[str, int] = (host, port)
        self.replies_dropped = 0  # reply lines (PONG, ERR) dropped for peers that do not read
        self.connections = 0  # open right now

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
            tg.start_soon(serve_listener, listener, self._handle, logger)
            tg.start_soon(self._expire_loop)
            logger.info(
                "listening on %s",
                _format_address(self.address),
                extra={"event": "listening", "address": _format_address(self.address)},
            )
            task_status.started(self.address)

    async def _expire_loop(self) -> None:
        while True:
            await anyio.sleep(EXPIRE_INTERVAL_SECONDS)
            self.registry.expire(self.clock())

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        session = Session(self.registry, max_line_bytes=self.max_line_bytes)
        peer = "?"
        self.connections += 1
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            try:
                peer = _format_address(raw.getpeername())
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer is gone already: the first receive will say so
            replies = _Replies(self)
            async with anyio.create_task_group() as tg:
                tg.start_soon(replies.write_all, stream)
                try:
                    await self._read_loop(stream, session, replies, peer)
                finally:
                    replies.finish()
                # The writer flushes the last replies (a fatal ERR), within a grace period.
                tg.cancel_scope.deadline = anyio.current_time() + CLOSE_GRACE_SECONDS
        except Exception as error:  # a bug here must never take the whole server down
            logger.exception(
                "connection from %s failed",
                peer,
                extra={"event": "connection-failed", "peer": peer, "error": repr(error)},
            )
        finally:
            self.connections -= 1
            name = session.name
            if not session.closed:
                try:
                    session.receive_data(b"", self.clock())
                except Exception as error:
                    logger.exception(
                        "closing the session of %s failed",
                        peer,
                        extra={"event": "connection-failed", "peer": peer, "error": repr(error)},
                    )
            if name is not None:
                logger.info(
                    "client %s disconnected (%s)",
                    name,
                    peer,
                    extra={"event": "client-closed", "client": name, "peer": peer},
                )
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_loop(
        self, stream: anyio.abc.SocketStream, session: Session, replies: _Replies, peer: str
    ) -> None:
        receive = stream.receive
        feed = session.receive_data
        clock = self.clock
        named = False
        while True:
            try:
                data = await receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            reply = feed(data, clock())
            if reply:
                replies.put(reply)
                if b"ERR " in reply:
                    _log_errors(reply, session.name, peer)
            if not named and session.name is not None:
                named = True
                logger.info(
                    "client %s connected (%s)",
                    session.name,
                    peer,
                    extra={"event": "client-ready", "client": session.name, "peer": peer},
                )
            if session.closed or not data:
                return


def _log_errors(reply: bytes, name: str | None, peer: str) -> None:
    """One log record per reply chunk (not per ERR line: a flooding peer must not flood it)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    errors = [line for line in reply.decode("utf-8", "replace").splitlines() if line[:4] == "ERR "]
    if not errors:
        return
    code = errors[0].split(" ", 2)[1]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    logger.info(
        "%s: %s%s",
        name or peer,
        errors[0],
        more,
        extra={
            "event": "error-reply",
            "client": name,
            "peer": peer,
            "code": code,
            "count": len(errors),
        },
    )
