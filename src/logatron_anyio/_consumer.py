"""The consumer library: read a Logatron server over its HTTP API and follow it live.

``Consumer(url, token=...)`` offers ``clients()``, ``client(name)``, ``state(name)``,
``recent(...)`` (one request each, over h11) and ``tail(...)``, an async iterator over the
WebSocket tail (wsproto) that reconnects by itself and resumes after the last ``seq`` it saw,
so while the entries are still buffered nothing is lost or repeated; when they are not, the
server's ``Gap`` notice is passed on, never hidden.

Errors are distinct: :class:`Unauthorized` (401), :class:`NotFound` (404), :class:`BadResponse`
(any other failure status, or a reply that is not the API's JSON) and :class:`Unreachable`
(no connection could be made). All derive from :class:`ConsumerError`; they and the decoding
of the API's JSON are in ``_decode.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import anyio
import anyio.abc
import h11
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as WebSocketRequest
from wsproto.utilities import RemoteProtocolError as WebSocketProtocolError

from logatron_core import ClientInfo, LogEntry

from ._decode import (
    BadResponse,
    ConsumerError,
    Current,
    TailEvent,
    Unreachable,
    convert,
    decode_client,
    decode_entry,
    decode_tail_event,
    parse_json,
    status_error,
)

__all__ = ["Consumer", "TailStream"]

# A reply larger than this is refused (BadResponse): the API's biggest, /api/recent over every
# client's full buffer, stays far below it with the default limits.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

RECEIVE_BYTES = 64 * 1024

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Hooks:
    """How :meth:`Consumer.tail` behaves around its connections (see there)."""

    on_connect: Callable[[], Awaitable[None] | None] | None
    on_retry: Callable[[ConsumerError | None], Awaitable[None] | None] | None
    reconnect: bool
    keepalive: float
    max_backoff: float


async def _call(callback: Callable[..., Awaitable[None] | None], *args: object) -> None:
    """Call a plain or async callback."""
    result = callback(*args)
    if result is not None:
        await result


def _filters(
    client: str | Sequence[str] | None, include: Sequence[str], exclude: Sequence[str]
) -> dict[str, Any]:
    """The query parameters of the server-side filters (lists: repeated parameters)."""
    clients = [client] if isinstance(client, str) else None if client is None else list(client)
    return {"client": clients, "include": list(include) or None, "exclude": list(exclude) or None}


class TailStream:
    """The events of :meth:`Consumer.tail`: an async iterator and an async context manager."""

    def __init__(self, events: AsyncGenerator[TailEvent, None]) -> None:
        self._events = events

    def __aiter__(self) -> TailStream:
        return self

    async def __anext__(self) -> TailEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Close the connection; iteration ends."""
        await self._events.aclose()

    async def __aenter__(self) -> TailStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Consumer:
    """A client of one server's HTTP API: ``Consumer("http://127.0.0.1:2213", token=...)``.

    ``token`` defaults to the ``LOGATRON_TOKEN`` environment variable. ``timeout`` bounds each
    request and each connection attempt. Raises ValueError for a URL that is not ``http://``.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:2213",
        *,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected a URL like http://host:port, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = parts.netloc
        self.token = token if token is not None else os.environ.get("LOGATRON_TOKEN") or None
        self.timeout = timeout

    # -- one-shot queries ----------------------------------------------------------------------

    async def clients(self, *, lines: int = 0) -> dict[str, ClientInfo]:
        """Every client by name, each with its newest ``lines`` log entries."""
        clients = await self._get_json(
            "/api/clients", {"lines": lines}, lambda body: list(map(decode_client, body["clients"]))
        )
        return {info.name: info for info in clients}

    async def client(self, name: str) -> ClientInfo:
        """One client's record with its whole buffered log. Raises NotFound."""
        return await self._get_json(f"/api/clients/{name}", None, decode_client)

    async def state(self, name: str) -> dict[str, str]:
        """One client's state. Raises NotFound."""
        return await self._get_json(
            f"/api/clients/{name}/state",
            None,
            lambda body: {str(k): str(v) for k, v in body["state"].items()},
        )

    async def recent(
        self,
        client: str | Sequence[str] | None = None,
        *,
        since: int = 0,
        limit: int | None = None,
        newest: int | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> list[LogEntry]:
        """Buffered entries of every client (or of ``client``: a name, a shell-style pattern
        such as ``worker-*``, or several) with ``seq > since``, ordered by seq: the oldest
        ``limit`` of them (to page forward) or the newest ``newest`` (``?tail=N``), not both;
        only lines matching any ``include`` and no ``exclude`` pattern (RE2 syntax), if given.

        Raises NotFound for an unknown client (a single name), BadResponse for a pattern the
        server refuses. ``sort_entries()`` orders them by timestamp.
        """
        query = {**_filters(client, include, exclude), "limit": limit, "tail": newest}
        query = {key: value for key, value in query.items() if value is not None}
        query["since"] = since
        return await self._get_json(
            "/api/recent", query, lambda body: [decode_entry(entry) for entry in body["entries"]]
        )

    async def _get_json(
        self, path: str, query: dict[str, Any] | None, decoder: Callable[[Any], _T]
    ) -> _T:
        """GET ``path`` and decode its JSON; raises the ConsumerError that fits."""
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        try:
            with anyio.fail_after(self.timeout):
                status, body = await self._get(target)
        except TimeoutError:
            raise Unreachable(f"no answer from {self._host_header} in {self.timeout:g} s") from None
        if status != 200:
            raise status_error(status, body)
        return convert(decoder, parse_json(body))

    async def _connect(self) -> anyio.abc.SocketStream:
        try:
            with anyio.fail_after(self.timeout):
                return await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as error:
            raise Unreachable(f"cannot connect to {self._host_header}: {error}") from None

    def _headers(self) -> list[tuple[bytes, bytes]]:
        """The request's headers; the token in UTF-8, as a server compares it."""
        headers = [(b"host", self._host_header.encode()), (b"accept", b"application/json")]
        if self.token:
            headers.append((b"authorization", b"Bearer " + self.token.encode()))
        return headers

    async def _get(self, target: str) -> tuple[int, bytes]:
        stream = await self._connect()
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET", target=target, headers=[*self._headers(), (b"connection", b"close")]
            )
            try:
                await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
                status, body = 0, bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            data = await stream.receive(RECEIVE_BYTES)
                        except anyio.EndOfStream:
                            data = b""
                        conn.receive_data(data)
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise BadResponse("response too large")
                    elif isinstance(event, h11.EndOfMessage):
                        return status, bytes(body)
                    else:
                        raise BadResponse("the server closed before answering")
            except h11.ProtocolError as error:
                raise BadResponse(f"malformed HTTP from the server: {error}") from None
            except (anyio.BrokenResourceError, OSError) as error:
                raise Unreachable(f"connection to {self._host_header} broke: {error}") from None

    # -- the live tail -------------------------------------------------------------------------

    def tail(
        self,
        client: str | Sequence[str] | None = None,
        *,
        since: int | None = None,
        newest: int | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        on_connect: Callable[[], Awaitable[None] | None] | None = None,
        reconnect: bool = True,
        keepalive: float = 30.0,
        max_backoff: float = 10.0,
        on_retry: Callable[[ConsumerError | None], Awaitable[None] | None] | None = None,
    ) -> TailStream:
        """Follow the server: the backlog after ``since`` (all of it if None; only its newest
        ``newest`` lines if given), ``Current``, then live events, for every client or those
        ``client`` names (a name, a shell-style pattern, or several: clients that connect
        later included); log lines only if they match any ``include`` and no ``exclude``
        pattern (RE2 syntax), if given.

        Use as ``async with consumer.tail() as events: async for event in events: ...`` so
        the connection is closed when you stop (or call ``aclose()``).

        After a lost connection it reconnects (backoff up to ``max_backoff`` s) with the last
        seq it yielded as cursor. ``on_connect`` (plain or async) is called at each connect;
        ``on_retry`` (plain or async) before each wait to reconnect, with the error that ended
        the last attempt (``Unreachable``, ``BadResponse``) or None when the server closed.
        ``keepalive``: with nothing received for twice this long (the server pings every 20 s),
        the connection is taken as dead. Raises Unauthorized at once; Unreachable and
        BadResponse only when ``reconnect`` is false; NotFound never (a client that does not
        exist yet may connect later).
        """
        hooks = _Hooks(on_connect, on_retry, reconnect, keepalive, max_backoff)
        filters = _filters(client, include, exclude)
        return TailStream(self._follow(filters, since, newest, hooks))

    async def _follow(
        self, filters: dict[str, Any], since: int | None, newest: int | None, hooks: _Hooks
    ) -> AsyncGenerator[TailEvent, None]:
        # After the first backlog, a reconnect resumes after the cursor: every line after it.
        cursor = since
        backoff = 0.1
        while True:
            failure: ConsumerError | None = None
            query = {**filters, "since": cursor, "tail": newest}
            try:
                session = self._tail_once(query, hooks)
                async with aclosing(session):
                    async for event in session:
                        backoff = 0.1
                        if isinstance(event, LogEntry):
                            cursor = event.seq
                        elif isinstance(event, Current):
                            newest = None
                            if cursor is None:
                                cursor = event.last_seq
                        yield event
                if not hooks.reconnect:
                    return
            except (Unreachable, BadResponse) as error:
                if not hooks.reconnect:
                    raise
                failure = error
            if hooks.on_retry is not None:
                await _call(hooks.on_retry, failure)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, hooks.max_backoff)

    async def _tail_once(
        self, query: dict[str, Any], hooks: _Hooks
    ) -> AsyncGenerator[TailEvent, None]:
        """One WebSocket session (``query``'s None values left out); ends when the server
        closes it or the connection dies."""
        given = {key: value for key, value in query.items() if value is not None}
        target = "/api/tail" + ("?" + urlencode(given, doseq=True) if given else "")
        keepalive, on_connect = hooks.keepalive, hooks.on_connect
        stream = await self._connect()
        async with stream:
            ws = WSConnection(ConnectionType.CLIENT)
            extra = [(key, value) for key, value in self._headers() if key != b"host"]
            handshake = WebSocketRequest(host=self._host_header, target=target, extra_headers=extra)
            try:
                await stream.send(ws.send(handshake))
                accepted, status = False, 0
                rejection, text = bytearray(), []
                while True:
                    data: bytes | None = None
                    with anyio.move_on_after(2 * keepalive) as silence:
                        try:
                            data = await stream.receive(RECEIVE_BYTES)
                        except anyio.EndOfStream:
                            data = None
                    if silence.cancelled_caught:
                        return  # nothing, not even a ping, for too long: the caller reconnects
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, TextMessage):
                            text.append(event.data)
                            if event.message_finished:
                                message, text = "".join(text), []
                                yield convert(decode_tail_event, parse_json(message.encode()))
                        elif isinstance(event, AcceptConnection):
                            accepted = True
                            if on_connect is not None:
                                await _call(on_connect)
                        elif isinstance(event, RejectConnection):
                            status = event.status_code
                            if not event.has_body:
                                raise status_error(status, b"")
                        elif isinstance(event, RejectData):
                            rejection += event.data
                            if event.body_finished:
                                raise status_error(status, bytes(rejection))
                        elif isinstance(event, Ping):
                            await stream.send(ws.send(event.response()))
                        elif isinstance(event, CloseConnection):
                            return
                    if data is None:
                        if not accepted:
                            raise BadResponse("the server closed during the handshake")
                        return
            except WebSocketProtocolError as error:
                raise BadResponse(f"bad WebSocket reply: {error}") from None
            except (anyio.BrokenResourceError, OSError) as error:
                raise Unreachable(f"connection to {self._host_header} broke: {error}") from None
