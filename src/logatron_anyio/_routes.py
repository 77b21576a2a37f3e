"""The vocabulary of route handlers: a request in, a reply (or a WebSocket) out, and the table
that picks the handler for a method and a path. No I/O and no registry here.

A route is a method, a path pattern and a handler::

    Route("GET", "/api/clients/{name}/log", api.client_log)

A pattern's ``{field}`` segment matches one non-empty path segment, handed to the handler in
``request.params``. A ``GET`` route answers ``HEAD`` too (the same headers, no body). The table
answers a path no route matches with 404 and a known path asked with another method with 405
and ``Allow``. A handler returns a :class:`Reply`, or an :class:`Upgrade` to take the connection
over as a WebSocket, and raises :class:`HttpError` for an error answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import anyio.abc
from wsproto import WSConnection

from ._messages import dumps, error_json

__all__ = [
    "JSON",
    "ApiRequest",
    "Handler",
    "HttpError",
    "Query",
    "Reply",
    "Route",
    "RouteTable",
    "Upgrade",
    "json_reply",
]

JSON = "application/json; charset=utf-8"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer: status, body, its content type and any extra headers."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Headers = ()


def json_reply(status: int, payload: Any, headers: Headers = ()) -> Reply:
    return Reply(status, dumps(payload), JSON, headers)


class HttpError(Exception):
    """A request that gets an error reply: ``{"error": message, "code": code}``."""

    def __init__(self, status: int, code: str, message: str, headers: Headers = ()) -> None:
        super().__init__(message)
        self.reply = json_reply(status, error_json(code, message), headers)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Take the connection over as a WebSocket: once the handshake is accepted, ``serve`` is
    called with the socket, the wsproto connection and the seconds a write may take, and
    serves it to its end."""

    serve: Callable[[anyio.abc.ByteStream, WSConnection, float], Awaitable[None]]


class Query:
    """The parsed query string of one request; typed getters raise HttpError (400)."""

    def __init__(self, raw: str) -> None:
        self._values = parse_qs(raw, keep_blank_values=True)

    def text(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[-1] if values else None

    def texts(self, name: str) -> list[str]:
        """Every value of a repeatable parameter, in order."""
        return list(self._values.get(name, ()))

    def integer(self, name: str, minimum: int) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise HttpError(400, "bad-request", f"{name} must be an integer, not {raw!r}") from None
        if value < minimum:
            raise HttpError(400, "bad-request", f"{name} must be at least {minimum}")
        return value


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What a handler sees of a request (its body, never needed, is read and dropped)."""

    method: str
    path: str
    query: Query
    headers: dict[str, bytes]  # lower-case names; the last of repeated ones
    params: dict[str, str] = field(default_factory=dict)  # the pattern's {fields}

    @property
    def websocket(self) -> bool:
        """The request asks for a WebSocket upgrade."""
        return b"websocket" in self.headers.get("upgrade", b"").lower()


Handler = Callable[[ApiRequest], Awaitable[Reply | Upgrade]]


@dataclass(frozen=True, slots=True)
class Route:
    """``method`` (``GET`` also answers ``HEAD``) and ``pattern`` → ``handler``; a ``public``
    route needs no token."""

    method: str
    pattern: str
    handler: Handler
    public: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/"))

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, "HEAD") if self.method == "GET" else (self.method,)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The pattern's fields if ``segments`` (a split path) match it, else None."""
        pattern = self.segments
        if len(pattern) != len(segments):
            return None
        params = {}
        for expected, actual in zip(pattern, segments, strict=True):
            if expected.startswith("{") and expected.endswith("}"):
                if not actual:
                    return None
                params[expected[1:-1]] = actual
            elif expected != actual:
                return None
        return params


@dataclass(frozen=True, slots=True)
class Match:
    """The outcome of a lookup: the route for the method (None if none), its fields, the
    methods the path allows (empty: no such path) and whether it needs no token."""

    route: Route | None
    params: dict[str, str]
    allowed: tuple[str, ...]
    public: bool

    def resolve(self, path: str) -> tuple[Route, dict[str, str]]:
        """The route and its fields; raises HttpError 404 (no such path) or 405 (with
        ``Allow``: the path exists for other methods)."""
        if self.route is not None:
            return self.route, self.params
        if not self.allowed:
            raise HttpError(404, "not-found", f"no such route: {path}")
        allow = ", ".join(self.allowed)
        raise HttpError(405, "method-not-allowed", f"use {allow}", (("allow", allow),))


class RouteTable:
    """Routes, tried in order; the first whose method and pattern match answers."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: list[Route] = list(routes)

    def add(self, route: Route) -> None:
        self.routes.append(route)

    def lookup(self, method: str, path: str) -> Match:
        """The route for ``method`` and ``path`` (percent-decoded segment by segment)."""
        segments = [unquote(segment) for segment in path.split("/")]
        found: Route | None = None
        found_params: dict[str, str] = {}
        allowed: list[str] = []
        public = False
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            allowed += [m for m in route.methods if m not in allowed]
            public = public or route.public
            if found is None and method in route.methods:
                found, found_params = route, params
        return Match(found, found_params, tuple(allowed), public)
