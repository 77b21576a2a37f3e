"""The HTTP and WebSocket interface on anyio, built on the sans-IO libraries h11 and wsproto.

One task per connection drives an ``h11.Connection``: requests are answered from the registry
(JSON, the status page, Prometheus metrics), with keep-alive. ``GET /api/tail`` with a
WebSocket upgrade is handed to wsproto (``initiate_upgrade_connection``) and served by
``_tail.run_tail``.

Bad input ends in a clear answer and never costs more than a bound: a request line or headers
past ``MAX_HEADER_BYTES`` get 431, malformed HTTP gets 400, and both close the connection; a
request body (none is expected) declared larger than ``MAX_BODY_BYTES`` gets 413; a request
whose line and headers take longer than ``HEAD_TIMEOUT_SECONDS`` to arrive (slowloris), or a
connection idle that long between requests, is closed; past ``MAX_CONNECTIONS`` open
connections a new one gets 503.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import anyio.abc
import h11
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import RemoteProtocolError as WebSocketProtocolError

from logatron_core import NoSuchClient, Registry, is_valid_name

from ._accept import serve_listener
from ._api import render_metrics
from ._messages import (
    client_payload,
    clients_payload,
    dumps,
    entries_payload,
    error_json,
    run_payloads,
    state_json,
)
from ._tail import TailOptions, run_tail

__all__ = [
    "HEAD_TIMEOUT_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "HttpServer",
]

logger = logging.getLogger("logatron.http")

# Request line plus headers. Browsers send under 8 KiB; nginx's default large buffers are
# 4 x 8 KiB, node's header limit is 16 KiB. Past this: 431.
MAX_HEADER_BYTES = 16 * 1024

# No route takes a body; one up to this size is read and ignored, a larger one gets 413.
MAX_BODY_BYTES = 64 * 1024

# Time for a request line and headers to arrive, counted from the end of the previous
# request (so it also bounds an idle keep-alive connection). nginx's client_header_timeout
# is 60 s.
HEAD_TIMEOUT_SECONDS = 60.0

# Open HTTP connections (WebSocket tails included); one more is answered 503 and closed.
MAX_CONNECTIONS = 1024

RECEIVE_BYTES = 64 * 1024

# Lines encoded between two checkpoints when answering with many entries.
ENCODE_CHUNK_LINES = 5_000

_JSON = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()


class _HttpError(Exception):
    """A request that gets an error reply: ``{"error": message, "code": code}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.reply = _json_reply(status, error_json(code, message), headers)


def _json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, dumps(payload), _JSON, headers)


class _Query:
    """The parsed query string of one request; typed getters raise _HttpError (400)."""

    def __init__(self, raw: str) -> None:
        self._values = parse_qs(raw, keep_blank_values=True)

    def text(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[-1] if values else None

    def integer(self, name: str, minimum: int) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise _HttpError(
                400, "bad-request", f"{name} must be an integer, not {raw!r}"
            ) from None
        if value < minimum:
            raise _HttpError(400, "bad-request", f"{name} must be at least {minimum}")
        return value

    def client(self) -> str | None:
        name = self.text("client")
        if name is not None and not is_valid_name(name):
            raise _HttpError(400, "bad-request", f"invalid client name: {name!r}")
        return name


def _status_page() -> bytes:
    return resources.files("logatron_anyio").joinpath("status.html").read_bytes()


class HttpServer:
    """The HTTP API, the WebSocket tail and the status page over one registry.

    ``token``: when set, every route but ``/healthz`` needs ``Authorization: Bearer <token>``
    (or ``?token=<token>``, for browsers' WebSockets). ``connection_stats`` gives the TCP
    server's (open connections, replies dropped) for ``/metrics``.
    """

    def __init__(
        self,
        registry: Registry,
        host: str = "127.0.0.1",
        port: int = 2213,
        *,
        token: str | None = None,
        tail_options: TailOptions | None = None,
        connection_stats: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.address: tuple[str, int] = (host, port)
        self._token = token.encode() if token else None
        self.tail_options = tail_options or TailOptions()
        self._connection_stats = connection_stats or (lambda: (registry.connected_count, 0))
        self._page = _status_page()
        self.open_connections = 0

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled (open tails get a 1001 close).

        Reports (host, port) through ``task_status``; raises OSError if it cannot listen.
        """
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener:
            bound = listener.extra(anyio.abc.SocketAttribute.local_address)
            assert isinstance(bound, tuple)
            self.address = (str(bound[0]), int(bound[1]))
            self.port = self.address[1]
            task_status.started(self.address)
            await serve_listener(listener, self._handle, logger)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            if self.open_connections >= MAX_CONNECTIONS:
                await _refuse_busy(stream)
                return
            self.open_connections += 1
            try:
                await self._serve_connection(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the peer went away
            except Exception:
                logger.exception("HTTP connection failed", extra={"event": "http-failed"})
            finally:
                self.open_connections -= 1

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            try:
                event = None
                with anyio.move_on_after(HEAD_TIMEOUT_SECONDS):
                    event = await self._next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or too slow
                if _head_size(event) > MAX_HEADER_BYTES:
                    raise h11.RemoteProtocolError("request headers too large", 431)
                if await self._serve_request(conn, stream, event):
                    return  # now a WebSocket, served to its end
                if not await self._discard_body(conn, stream):
                    return
            except h11.RemoteProtocolError as error:
                await self._refuse_malformed(conn, stream, error)
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _next_event(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> Any:
        """The next h11 event, reading as needed."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await stream.receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            conn.receive_data(data)

    async def _discard_body(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> bool:
        """Read and drop a request body; False if the connection must end (the body is over
        MAX_BODY_BYTES, or has not arrived within HEAD_TIMEOUT_SECONDS)."""
        received = 0
        with anyio.move_on_after(HEAD_TIMEOUT_SECONDS):
            while conn.their_state is h11.SEND_BODY:
                event = await self._next_event(conn, stream)
                if isinstance(event, h11.Data):
                    received += len(event.data)
                    if received > MAX_BODY_BYTES:
                        return False
                elif not isinstance(event, h11.EndOfMessage):
                    return False
            return True
        return False

    async def _refuse_malformed(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, error: h11.RemoteProtocolError
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = error.error_status_hint
        code = "headers-too-large" if status == 431 else "bad-request"
        reply = _json_reply(status, {"error": str(error) or "malformed request", "code": code})
        await self._send_reply(conn, stream, reply, head=False, close=True)

    async def _serve_request(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, request: h11.Request
    ) -> bool:
        """Answer one request; True if it became a WebSocket (served until it ended)."""
        method = request.method.decode("ascii", "replace")
        target = urlsplit(request.target.decode("ascii", "replace"))
        path, query = unquote(target.path), _Query(target.query)
        headers = {name.decode("latin-1"): value for name, value in request.headers}
        try:
            if int(headers.get("content-length", b"0") or 0) > MAX_BODY_BYTES:
                message = f"no route takes a body over {MAX_BODY_BYTES} bytes"
                raise _HttpError(413, "body-too-large", message)
            if path != "/healthz":
                self._authorize(headers.get("authorization"), query.text("token"))
            if path == "/api/tail" and b"websocket" in headers.get("upgrade", b"").lower():
                if method != "GET":
                    raise _HttpError(405, "method-not-allowed", "use GET", (("allow", "GET"),))
                await self._upgrade(conn, stream, request, query)
                return True
            if method not in ("GET", "HEAD"):
                allow = (("allow", "GET, HEAD"),)
                raise _HttpError(405, "method-not-allowed", f"{method} is not allowed", allow)
            reply = await self._route(path, query)
        except _HttpError as error:
            reply = error.reply
        close = method not in ("GET", "HEAD") or reply.status == 413
        await self._send_reply(conn, stream, reply, head=method == "HEAD", close=close)
        return False

    def _authorize(self, authorization: bytes | None, query_token: str | None) -> None:
        """Raises _HttpError (401) unless the request carries the token (if one is set)."""
        if self._token is None:
            return
        offered = b""
        if authorization is not None:
            scheme, _, credentials = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                offered = credentials.strip()
        elif query_token is not None:
            offered = query_token.encode()
        if not hmac.compare_digest(offered, self._token):
            challenge = (("www-authenticate", 'Bearer realm="logatron"'),)
            raise _HttpError(401, "unauthorized", "a valid bearer token is required", challenge)

    async def _route(self, path: str, query: _Query) -> _Reply:
        registry = self.registry
        if path == "/healthz":
            return _json_reply(200, {"status": "ok"})
        if path == "/":
            return _Reply(200, self._page, "text/html; charset=utf-8")
        if path == "/metrics":
            connections, dropped = self._connection_stats()
            text = render_metrics(
                registry,
                open_connections=connections,
                replies_dropped=dropped,
                tail_subscribers=self.tail_options.subscribers,
                tail_lagged_events=self.tail_options.lagged_total,
            )
            return _Reply(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/api/clients":
            lines = query.integer("lines", 0) or 0
            bodies = [self._client_body(name, lines) for name in registry.names()]
            return _Reply(200, clients_payload(bodies, registry.last_seq))
        if path == "/api/recent":
            return await self._entries(None, self._known(query.client()), query)
        if path == "/api/tail":
            upgrade = (("upgrade", "websocket"), ("connection", "upgrade"))
            raise _HttpError(426, "upgrade-required", "/api/tail is a WebSocket", upgrade)
        parts = path.split("/")
        if len(parts) in (4, 5) and parts[:3] == ["", "api", "clients"]:
            name = self._known(parts[3])
            assert name is not None
            if len(parts) == 4:
                return _Reply(200, self._client_body(name, None))
            if parts[4] == "log":
                return await self._entries(name, name, query)
            if parts[4] == "state":
                return _json_reply(200, state_json(name, registry.state(name)))
        raise _HttpError(404, "not-found", f"no such route: {path}")

    async def _entries(self, field: str | None, client: str | None, query: _Query) -> _Reply:
        """``entries_payload`` (``"client": field`` in it unless None) for ``since``/``limit``:
        a snapshot of the registry's runs (cheap), encoded with a checkpoint every
        ENCODE_CHUNK_LINES lines, so a large answer never stalls ingest or the tails."""
        since = query.integer("since", 0) or 0
        limit = query.integer("limit", 1)
        last_seq = self.registry.last_seq
        runs = self.registry.backlog(since, client)
        entries: list[bytes] = []
        since_checkpoint = 0
        for run in runs:
            left = None if limit is None else limit - len(entries)
            if left == 0:
                break
            entries += run_payloads(run, limit=left)
            since_checkpoint += len(run.messages)
            if since_checkpoint >= ENCODE_CHUNK_LINES:
                since_checkpoint = 0
                await anyio.lowlevel.checkpoint()
        return _Reply(200, entries_payload(field, entries, last_seq))

    def _client_body(self, name: str, lines: int | None) -> bytes:
        """``name``'s record with its newest ``lines`` lines (all if None)."""
        registry = self.registry
        summary = registry.client(name, log_limit=0)
        runs = registry.backlog(0, name) if lines is None else registry.newest(name, lines)
        return client_payload(summary, runs)

    def _known(self, name: str | None) -> str | None:
        """``name`` if the registry knows it (or None); raises _HttpError (404) otherwise."""
        if name is None:
            return None
        if not is_valid_name(name):
            raise _HttpError(400, "bad-request", f"invalid client name: {name!r}")
        try:
            self.registry.oldest_seq(name)
        except NoSuchClient:
            raise _HttpError(404, "no-such-client", f"no such client: {name}") from None
        return name

    async def _send_reply(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        reply: _Reply,
        *,
        head: bool,
        close: bool,
    ) -> None:
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            ("cache-control", "no-store"),
            *reply.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        reason = HTTPStatus(reply.status).phrase.encode()
        data = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))
        if not head:
            data += conn.send(h11.Data(data=reply.body))
        data += conn.send(h11.EndOfMessage())
        await stream.send(data)

    async def _upgrade(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: h11.Request,
        query: _Query,
    ) -> None:
        """Accept the WebSocket (or answer 400) and serve the tail to its end."""
        client = query.client()
        since = query.integer("since", 0)
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(list(request.headers), request.target)
            handshake = next(ws.events(), None)
        except WebSocketProtocolError as error:
            raise _HttpError(400, "bad-request", f"bad WebSocket handshake: {error}") from None
        if not isinstance(handshake, Request):
            raise _HttpError(400, "bad-request", "bad WebSocket handshake")
        trailing, _ = conn.trailing_data
        await stream.send(ws.send(AcceptConnection()))
        if trailing:
            ws.receive_data(trailing)
        await run_tail(
            stream, ws, self.registry, client=client, since=since, options=self.tail_options
        )


def _head_size(request: h11.Request) -> int:
    """Bytes of a request's line and headers, as sent (h11 bounds only what arrives
    incomplete, so a head that arrives whole is measured here against the same limit)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    headers = sum(len(name) + len(value) + len(b": \r\n") for name, value in request.headers)
    return line + headers + len(b"\r\n")


async def _refuse_busy(stream: anyio.abc.SocketStream) -> None:
    """Answer 503 to a connection past MAX_CONNECTIONS: read what the request sent first (so
    the close is not a reset that loses the answer), within a second; never raises."""
    with anyio.move_on_after(1):
        try:
            await stream.receive(MAX_HEADER_BYTES)
            await stream.send(_BUSY)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 56\r\nconnection: close\r\n\r\n"
    b'{"error":"too many open connections","code":"too-busy"}\n'
)
