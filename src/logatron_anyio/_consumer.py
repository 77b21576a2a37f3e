"""The consumer library: read a Logatron server over its HTTP API and follow it live.

``Consumer(url, token=...)`` offers ``clients()``, ``client(name)``, ``state(name)``,
``recent(...)`` (one request each, over h11) and ``tail(...)``, an async iterator over the
WebSocket tail (wsproto) that reconnects by itself and resumes after the last ``seq`` it saw,
so while the entries are still buffered nothing is lost or repeated; when they are not, the
server's ``Gap`` notice is passed on, never hidden.

Errors are distinct: :class:`Unauthorized` (401), :class:`NotFound` (404), :class:`BadResponse`
(any other failure status, or a reply that is not the API's JSON) and :class:`Unreachable`
(no connection could be made). All derive from :class:`ConsumerError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
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

from logatron_core import (
    ClientClosed,
    ClientExpired,
    ClientInfo,
    ClientReady,
    LogatronError,
    LogEntry,
    StateSet,
)

from ._stream import Lagged

__all__ = [
    "BadResponse",
    "Consumer",
    "ConsumerError",
    "Current",
    "Gap",
    "NotFound",
    "TailEvent",
    "TailStream",
    "Unauthorized",
    "Unreachable",
    "sort_entries",
]

# A reply larger than this is refused (BadResponse): the API's biggest, /api/recent over every
# client's full buffer, stays far below it with the default limits.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

RECEIVE_BYTES = 64 * 1024


class ConsumerError(LogatronError):
    """Base of the consumer's errors."""


class Unauthorized(ConsumerError):
    """The server wants a (different) bearer token: HTTP 401."""


class NotFound(ConsumerError):
    """No such client (or route): HTTP 404."""


class BadResponse(ConsumerError):
    """The server answered with an unexpected status or something that is not the API's JSON."""


class Unreachable(ConsumerError):
    """No connection to the server could be made (refused, unknown host, timed out)."""


@dataclass(frozen=True, slots=True)
class Current:
    """The tail has sent the whole backlog; what follows is live. ``last_seq`` was the newest."""

    last_seq: int


@dataclass(frozen=True, slots=True)
class Gap:
    """``missed`` entries after the cursor were evicted before they could be sent."""

    missed: int


TailEvent = (
    LogEntry | ClientReady | StateSet | ClientClosed | ClientExpired | Current | Gap | Lagged
)


def sort_entries(entries: Iterable[LogEntry]) -> list[LogEntry]:
    """Entries ordered by timestamp, then ``seq`` (stable: equal keys keep their order)."""
    return sorted(entries, key=lambda entry: (entry.timestamp, entry.seq))


def _entry(data: dict[str, Any]) -> LogEntry:
    return LogEntry(
        str(data["client"]),
        int(data["seq"]),
        float(data["timestamp"]),
        str(data["message"]),
        bool(data.get("truncated", False)),
    )


def _client(data: dict[str, Any]) -> ClientInfo:
    disconnected_at = data.get("disconnected_at")
    return ClientInfo(
        str(data["name"]),
        bool(data["connected"]),
        float(data["connected_at"]),
        None if disconnected_at is None else float(disconnected_at),
        {str(k): str(v) for k, v in data["state"].items()},
        [_entry(entry) for entry in data.get("log", [])],
        int(data["lines_received"]),
        int(data["lines_evicted"]),
        int(data["errors"]),
    )


def _tail_event(data: dict[str, Any]) -> TailEvent:
    kind = data["type"]
    if kind == "log":
        return _entry(data)
    if kind == "set":
        return StateSet(data["client"], data["key"], data["value"], float(data["timestamp"]))
    if kind == "ready":
        return ClientReady(data["client"], float(data["timestamp"]))
    if kind == "close":
        return ClientClosed(data["client"], float(data["timestamp"]))
    if kind == "expired":
        return ClientExpired(data["client"], float(data["timestamp"]))
    if kind == "current":
        return Current(int(data["last_seq"]))
    if kind == "gap":
        return Gap(int(data["missed"]))
    if kind == "lagged":
        return Lagged(int(data["missed"]))
    raise BadResponse(f"unknown tail message type: {kind!r}")


_T = TypeVar("_T")


def _convert(convert: Callable[[Any], _T], body: Any) -> _T:
    """``convert(body)``; JSON of the wrong shape raises BadResponse."""
    try:
        return convert(body)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadResponse(f"unexpected JSON from the server: {error!r}") from None


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BadResponse(f"not JSON: {body[:80]!r}") from None


def _status_error(status: int, body: bytes) -> ConsumerError:
    try:
        detail = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        detail = body[:200].decode("utf-8", "replace")
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 401:
        return Unauthorized(message)
    if status == 404:
        return NotFound(message)
    return BadResponse(message)


def _filters(
    client: str | Sequence[str] | None, include: Sequence[str], exclude: Sequence[str]
) -> dict[str, Any]:
    """The query parameters of the server-side filters."""
    query: dict[str, Any] = {}
    if client is not None:
        query["client"] = [client] if isinstance(client, str) else list(client)
    if include:
        query["include"] = list(include)
    if exclude:
        query["exclude"] = list(exclude)
    return query


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
            "/api/clients", {"lines": lines}, lambda body: list(map(_client, body["clients"]))
        )
        return {info.name: info for info in clients}

    async def client(self, name: str) -> ClientInfo:
        """One client's record with its whole buffered log. Raises NotFound."""
        return await self._get_json(f"/api/clients/{name}", None, _client)

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
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> list[LogEntry]:
        """Buffered entries of every client (or of ``client``: a name, a shell-style pattern
        such as ``worker-*``, or several) with ``seq > since``, ordered by seq; only lines
        matching any ``include`` and no ``exclude`` pattern (RE2 syntax), if given.

        Raises NotFound for an unknown client (a single name), BadResponse for a pattern the
        server refuses. ``sort_entries()`` orders them by timestamp.
        """
        query = _filters(client, include, exclude)
        query["since"] = since
        if limit is not None:
            query["limit"] = limit
        return await self._get_json(
            "/api/recent", query, lambda body: [_entry(entry) for entry in body["entries"]]
        )

    async def _get_json(
        self, path: str, query: dict[str, Any] | None, convert: Callable[[Any], _T]
    ) -> _T:
        """GET ``path`` and convert its JSON; raises the ConsumerError that fits."""
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        try:
            with anyio.fail_after(self.timeout):
                status, body = await self._get(target)
        except TimeoutError:
            raise Unreachable(f"no answer from {self._host_header} in {self.timeout:g} s") from None
        if status != 200:
            raise _status_error(status, body)
        return _convert(convert, _parse(body))

    async def _connect(self) -> anyio.abc.SocketStream:
        try:
            with anyio.fail_after(self.timeout):
                return await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as error:
            raise Unreachable(f"cannot connect to {self._host_header}: {error}") from None

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("host", self._host_header), ("accept", "application/json")]
        if self.token:
            headers.append(("authorization", f"Bearer {self.token}"))
        return headers

    async def _get(self, target: str) -> tuple[int, bytes]:
        stream = await self._connect()
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET", target=target, headers=[*self._headers(), ("connection", "close")]
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
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        on_connect: Callable[[], Awaitable[None] | None] | None = None,
        reconnect: bool = True,
        keepalive: float = 30.0,
        max_backoff: float = 10.0,
    ) -> TailStream:
        """Follow the server: the backlog after ``since`` (all of it if None), ``Current``,
        then live events, for every client or those ``client`` names (a name, a shell-style
        pattern, or several: clients that connect later included); log lines only if they
        match any ``include`` and no ``exclude`` pattern (RE2 syntax), if given.

        Use as ``async with consumer.tail() as events: async for event in events: ...`` so
        the connection is closed when you stop (or call ``aclose()``).

        After a lost connection it reconnects (backoff up to ``max_backoff`` s) with the last
        seq it yielded as cursor. ``on_connect`` (plain or async) is called at each connect.
        ``keepalive``: with nothing received for twice this long (the server pings every 20 s),
        the connection is taken as dead. Raises Unauthorized at once; Unreachable and
        BadResponse only when ``reconnect`` is false; NotFound never (a client that does not
        exist yet may connect later).
        """
        query = _filters(client, include, exclude)
        return TailStream(self._follow(query, since, on_connect, reconnect, keepalive, max_backoff))

    async def _follow(
        self,
        query: dict[str, Any],
        since: int | None,
        on_connect: Callable[[], Awaitable[None] | None] | None,
        reconnect: bool,
        keepalive: float,
        max_backoff: float,
    ) -> AsyncGenerator[TailEvent, None]:
        cursor = since
        backoff = 0.1
        while True:
            try:
                session = self._tail_once(query, cursor, on_connect, keepalive)
                async with aclosing(session):
                    async for event in session:
                        backoff = 0.1
                        if isinstance(event, LogEntry):
                            cursor = event.seq
                        elif isinstance(event, Current) and cursor is None:
                            cursor = event.last_seq
                        yield event
                if not reconnect:
                    return
            except (Unreachable, BadResponse):
                if not reconnect:
                    raise
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    async def _tail_once(
        self,
        filters: dict[str, Any],
        since: int | None,
        on_connect: Callable[[], Awaitable[None] | None] | None,
        keepalive: float,
    ) -> AsyncGenerator[TailEvent, None]:
        """One WebSocket session; ends when the server closes it or the connection dies."""
        query = dict(filters)
        if since is not None:
            query["since"] = since
        target = "/api/tail" + ("?" + urlencode(query, doseq=True) if query else "")
        stream = await self._connect()
        async with stream:
            ws = WSConnection(ConnectionType.CLIENT)
            extra = [(k.encode(), v.encode()) for k, v in self._headers() if k != "host"]
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
                                yield _convert(_tail_event, _parse(message.encode()))
                        elif isinstance(event, AcceptConnection):
                            accepted = True
                            if on_connect is not None:
                                result = on_connect()
                                if result is not None:
                                    await result
                        elif isinstance(event, RejectConnection):
                            status = event.status_code
                            if not event.has_body:
                                raise _status_error(status, b"")
                        elif isinstance(event, RejectData):
                            rejection += event.data
                            if event.body_finished:
                                raise _status_error(status, bytes(rejection))
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
