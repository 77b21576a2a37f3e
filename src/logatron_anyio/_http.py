"""The HTTP and WebSocket interface on anyio, built on the sans-IO libraries h11 and wsproto.

A request's way through (the shape of h11's ``examples/trio-server.py``):

- ``HttpServer.serve`` accepts connections; each is served in its own task by
  ``HttpServer._serve`` through one :class:`HttpConnection`, which holds the h11 state
  machine, the socket and the deadlines (``next_request``, ``send``, ``send_error``,
  ``shutdown``), with keep-alive.
- ``HttpServer._answer`` checks the body limit and the token (``_auth.HttpGate``: 401
  without a valid one, 403 for a token that may not read), looks the route up in the table
  (``_api.Api.routes``: the one place to add a route; ``_routes`` says how one is written) and
  calls its handler. An ``HttpError`` becomes its JSON answer; any other exception a JSON 500,
  logged with its traceback, and the server and its other connections go on.
- A handler's ``Upgrade`` (``GET /api/tail``) hands the socket to wsproto and the tail.
- What is sent: ``_messages``.

Bad input ends in a clear answer and never costs more than a bound; each bound is a
constructor argument whose default is the constant below: a request line and headers past
``max_header_bytes`` get 431 and malformed HTTP 400, both closing the connection; a request
body (none is expected) declared larger than ``max_body_bytes`` gets 413; a request whose head
(or body) takes longer than ``head_timeout`` to arrive (slowloris), or a connection idle that
long between requests, is closed; a write that takes longer than ``send_timeout`` (a peer that
stopped reading) ends the connection; past ``max_connections`` open connections a new one gets
503. With TLS (``ssl_context``), a connection's handshake runs before any of this, within
``handshake_timeout`` (``_tls``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import cast
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import h11
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.events import Request as WebSocketRequest
from wsproto.utilities import RemoteProtocolError as WebSocketProtocolError

from logatron_core import Authorizer, LogSource, NoSuchClient

from ._accept import serve_listener
from ._api import Api
from ._auth import HttpGate
from ._durable import StoreHealth
from ._messages import error_json
from ._routes import ApiRequest, HttpError, Query, Reply, RouteTable, Upgrade, json_reply
from ._tail import TailOptions
from ._tls import HANDSHAKE_TIMEOUT_SECONDS, peer_address, tls_handler

__all__ = [
    "HEAD_TIMEOUT_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "SEND_TIMEOUT_SECONDS",
    "HttpConnection",
    "HttpLimits",
    "HttpServer",
]

logger = logging.getLogger("logatron.http")

# Request line plus headers. Browsers send under 8 KiB; nginx's default large buffers are
# 4 x 8 KiB, node's header limit is 16 KiB. Past this: 431.
MAX_HEADER_BYTES = 16 * 1024

# No route takes a body; one up to this size is read and ignored, a larger one gets 413.
MAX_BODY_BYTES = 64 * 1024

# Time for a request line and headers to arrive, counted from the end of the previous
# request (so it also bounds an idle keep-alive connection); a body has as long again.
# nginx's client_header_timeout is 60 s.
HEAD_TIMEOUT_SECONDS = 60.0

# Time one write may take (an answer goes out SEND_CHUNK_BYTES at a time, a tail a batch of
# frames at a time); past it the peer is taken as gone. nginx's send_timeout is 60 s.
SEND_TIMEOUT_SECONDS = 60.0

# Open HTTP connections (WebSocket tails included); one more is answered 503 and closed.
MAX_CONNECTIONS = 1024

# How long a connection past MAX_CONNECTIONS may take to send its request and read the 503.
BUSY_ANSWER_SECONDS = 1.0

# How long a closing connection waits for the peer to close too (see HttpConnection.shutdown).
CLOSE_GRACE_SECONDS = 1.0

SEND_CHUNK_BYTES = 256 * 1024

RECEIVE_BYTES = 64 * 1024

# What ends a connection from the peer's side: it left, reset, or stopped reading in time.
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one connection may cost (see the module comment)."""

    max_header_bytes: int
    max_body_bytes: int
    head_timeout: float
    send_timeout: float


class HttpConnection:
    """One HTTP connection: its socket, its h11 state machine and its deadlines."""

    def __init__(self, stream: anyio.abc.ByteStream, limits: HttpLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.upgraded = False  # now a WebSocket: no more HTTP on it

    @property
    def peer(self) -> str:
        """The peer's address, for the log."""
        return peer_address(self.stream)

    @property
    def reusable(self) -> bool:
        """Whether another request may follow: both sides are done and keep the connection."""
        return self.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading as needed (a peer gone counts as end of input)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)  # h11's sentinels need a cast
            try:
                data = await self.stream.receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            self.conn.receive_data(data)

    async def next_request(self) -> h11.Request | None:
        """The next request's line and headers, within the head timeout; None if the peer
        closed, or was too slow. Raises h11.RemoteProtocolError for malformed HTTP (its
        status hint is 431 for a head over ``max_header_bytes``, else 400)."""
        if self.reusable:
            self.conn.start_next_cycle()
        with anyio.move_on_after(self.limits.head_timeout):
            event = await self.next_event()
            if not isinstance(event, h11.Request):
                return None
            if _head_size(event) > self.limits.max_header_bytes:
                raise h11.RemoteProtocolError("request headers too large", 431)
            return event
        return None

    async def discard_body(self) -> bool:
        """Read and drop a request body; False if the connection must end (the body is over
        ``max_body_bytes``, has not arrived within the head timeout, or the peer left)."""
        received = 0
        with anyio.move_on_after(self.limits.head_timeout):
            while self.conn.their_state is h11.SEND_BODY:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    received += len(event.data)
                    if received > self.limits.max_body_bytes:
                        return False
                elif not isinstance(event, h11.EndOfMessage):
                    return False
            return True
        return False

    async def send(self, *events: h11.Event) -> None:
        """Send h11 events in one write. Raises TimeoutError past the send timeout, or the
        stream's error; h11 then knows the connection is broken."""
        data = b"".join(self.conn.send(event) or b"" for event in events)
        try:
            await self.write(data)
        except BaseException:
            self.conn.send_failed()
            raise

    async def write(self, data: bytes) -> None:
        """Write bytes, SEND_CHUNK_BYTES at a time, each within the send timeout (else
        TimeoutError)."""
        chunks = [data]
        if len(data) > SEND_CHUNK_BYTES:
            chunks = [
                data[at : at + SEND_CHUNK_BYTES] for at in range(0, len(data), SEND_CHUNK_BYTES)
            ]
        for chunk in chunks:
            with anyio.fail_after(self.limits.send_timeout):
                await self.stream.send(chunk)

    async def send_reply(self, reply: Reply, *, head: bool = False, close: bool = False) -> None:
        """Send a whole answer (its headers only if ``head``), with ``connection: close`` if
        ``close``. Raises as ``send``."""
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            ("cache-control", "no-store"),
            *reply.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        reason = HTTPStatus(reply.status).phrase.encode()
        response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
        body = () if head else (h11.Data(data=reply.body),)
        await self.send(response, *body, h11.EndOfMessage())

    async def send_error(self, status: int, code: str, message: str) -> None:
        """Answer with a JSON error and ``connection: close`` if h11 still allows an answer
        (none has begun); never raises for a peer that is gone or does not read."""
        if self.upgraded or self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self.send_reply(json_reply(status, error_json(code, message)), close=True)
        except (h11.LocalProtocolError, *_GONE):
            pass

    async def upgrade(self, request: h11.Request, upgrade: Upgrade) -> None:
        """Accept ``request``'s WebSocket handshake and serve it to its end with ``upgrade``.

        Raises HttpError (400) for a bad handshake, before anything is sent."""
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(list(request.headers), request.target)
            handshake = next(ws.events(), None)
        except WebSocketProtocolError as error:
            raise HttpError(400, "bad-request", f"bad WebSocket handshake: {error}") from None
        if not isinstance(handshake, WebSocketRequest):
            raise HttpError(400, "bad-request", "bad WebSocket handshake")
        trailing, _ = self.conn.trailing_data
        self.upgraded = True
        await self.write(ws.send(AcceptConnection()))
        if trailing:
            ws.receive_data(trailing)
        await upgrade.serve(self.stream, ws, self.limits.send_timeout)

    async def refuse_busy(self) -> None:
        """Answer 503 to a connection past the limit: read its request first (so the close is
        not a reset that loses the answer), all within BUSY_ANSWER_SECONDS; never raises for a
        peer that is gone."""
        with anyio.move_on_after(BUSY_ANSWER_SECONDS):
            try:
                await self.next_event()
            except h11.RemoteProtocolError:
                pass  # answered all the same
            await self.send_error(503, "too-busy", "too many open connections")
        await self.shutdown()

    async def shutdown(self) -> None:
        """End the connection (the caller closes the stream): send EOF, then read and drop
        what the peer still sends until it closes too, for at most CLOSE_GRACE_SECONDS, since
        closing with unread input resets the connection, and a reset can destroy the answer
        before the peer has read it. Never raises for a peer that is gone."""
        with anyio.move_on_after(CLOSE_GRACE_SECONDS):
            try:
                try:
                    await self.stream.send_eof()
                except NotImplementedError:
                    pass  # TLS cannot half-close: wait for the peer, told ``connection: close``
                while await self.stream.receive(RECEIVE_BYTES):
                    pass
            except (anyio.EndOfStream, *_GONE):
                pass


def _head_size(request: h11.Request) -> int:
    """Bytes of a request's line and headers, as sent (h11 bounds only what arrives
    incomplete, so a head that arrives whole is measured here against the same limit)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    headers = sum(len(name) + len(value) + len(b": \r\n") for name, value in request.headers)
    return line + headers + len(b"\r\n")


def _status_page() -> bytes:
    return resources.files("logatron_anyio").joinpath("status.html").read_bytes()


class HttpServer:
    """The HTTP API, the WebSocket tail and the status page over one registry.

    ``token`` (one token that may read) and ``authorizer`` (tokens with scopes): with either,
    every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (or ``?token=<token>``,
    for browsers' WebSockets) of a token that may read. With ``ssl_context`` the server speaks
    HTTPS and WSS only, and a client has ``handshake_timeout`` seconds for its handshake.
    ``store_health`` gives a durable store's
    figures to ``/healthz`` and ``/metrics``. The limits (see the module
    comment) default to the module's constants. ``routes`` is the route table
    (``_api.Api.routes``). Raises ValueError for a limit that is not positive.
    """

    def __init__(
        self,
        registry: LogSource,
        host: str = "127.0.0.1",
        port: int = 2213,
        *,
        token: str | None = None,
        tail_options: TailOptions | None = None,
        store_health: Callable[[], StoreHealth] | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        authorizer: Authorizer | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        limits = (max_header_bytes, max_body_bytes, head_timeout, send_timeout, max_connections)
        if min(limits) <= 0:
            raise ValueError("HTTP limits must be positive")
        self.registry = registry
        self.host = host
        self.port = port
        self.address: tuple[str, int] = (host, port)
        policy = authorizer if authorizer is not None else Authorizer()
        self.gate = HttpGate(Authorizer.single_token(token) + policy if token else policy)
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.tail_options = tail_options or TailOptions()
        self.limits = HttpLimits(max_header_bytes, max_body_bytes, head_timeout, send_timeout)
        self.max_connections = max_connections
        self.open_connections = 0
        api = Api(
            registry,
            page=_status_page(),
            tail_options=self.tail_options,
            store_health=store_health,
            auth_failures=self.gate.failures,
        )
        self.routes = RouteTable(api.routes())

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
            handle = (
                self._handle
                if self.ssl_context is None
                else tls_handler(self._handle, self.ssl_context, logger, self.handshake_timeout)
            )
            await serve_listener(listener, handle, logger)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        async with stream:
            connection = HttpConnection(stream, self.limits)
            if self.open_connections >= self.max_connections:
                await connection.refuse_busy()
                return
            self.open_connections += 1
            try:
                if await self._serve(connection):
                    await connection.shutdown()
            except _GONE:
                pass  # the peer went away, or stopped reading (TimeoutError)
            except Exception:  # a bug outside the handlers (theirs are answered by _answer)
                logger.exception("HTTP connection failed", extra={"event": "http-failed"})
                await connection.send_error(500, "internal-error", "internal error")
            finally:
                self.open_connections -= 1

    async def _serve(self, connection: HttpConnection) -> bool:
        """Answer requests until the connection ends; False if it became a WebSocket (and was
        served to its end), True if it is left to shut down."""
        while True:
            try:
                request = await connection.next_request()
                if request is None:
                    return True  # closed, or too slow
                method = request.method.decode("ascii", "replace")
                answer = await self._answer(method, request, connection.peer)
                if isinstance(answer, Upgrade):
                    try:
                        await connection.upgrade(request, answer)
                        return False
                    except HttpError as error:
                        answer = error.reply
                close = method not in ("GET", "HEAD") or answer.status == 413
                await connection.send_reply(answer, head=method == "HEAD", close=close)
                if not await connection.discard_body():
                    return True
            except h11.RemoteProtocolError as error:
                status = error.error_status_hint
                code = "headers-too-large" if status == 431 else "bad-request"
                await connection.send_error(status, code, str(error) or "malformed request")
                return True
            if not connection.reusable:
                return True

    async def _answer(self, method: str, request: h11.Request, peer: str) -> Reply | Upgrade:
        """The answer to one request: its route's, an HttpError's, 404 ``no-such-client`` when
        a route asks the store for a client it does not know, or a 500 (logged) for any other
        exception."""
        target = urlsplit(request.target.decode("ascii", "replace"))
        query = Query(target.query)
        headers = {name.decode("latin-1"): value for name, value in request.headers}
        try:
            if int(headers.get("content-length", b"0") or 0) > self.limits.max_body_bytes:
                message = f"no route takes a body over {self.limits.max_body_bytes} bytes"
                raise HttpError(413, "body-too-large", message)
            match = self.routes.lookup(method, target.path)
            if not match.public:
                token = query.text("token")
                self.gate.check(headers.get("authorization"), token, peer, target.path)
            path = unquote(target.path)
            route, params = match.resolve(path)
            return await route.handler(ApiRequest(method, path, query, headers, params))
        except HttpError as error:
            return error.reply
        except NoSuchClient as unknown:
            message = f"no such client: {unknown.name}"
            return HttpError(404, "no-such-client", message).reply
        except Exception:
            logger.exception(
                "HTTP request failed: %s %s",
                method,
                target.path,
                extra={"event": "http-internal-error", "method": method, "path": target.path},
            )
            return json_reply(500, error_json("internal-error", "internal error"))
