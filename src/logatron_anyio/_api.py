"""The HTTP API's routes: what each one answers, read from the registry.

``Api.routes()`` is the route table (the one place to add a route); each handler takes an
``ApiRequest`` and returns a ``Reply`` (or an ``Upgrade`` for the WebSocket tail), raising
``HttpError`` for an error answer. Every registry read the HTTP layer makes is here, apart
from the tail's snapshot (``_tail.run_tail``). The shapes of the answers are in
``_messages``; ``render_metrics`` writes the Prometheus text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import anyio.abc
import anyio.lowlevel
from wsproto import WSConnection

from logatron_core import ErrorCode, NoSuchClient, Registry, is_valid_name

from ._messages import (
    client_json,
    client_payload,
    clients_payload,
    entries_payload,
    entry_json,
    run_payloads,
    state_json,
)
from ._messages import tail_event_json as event_json
from ._routes import ApiRequest, HttpError, Reply, Route, Upgrade, json_reply
from ._tail import TailOptions, run_tail

# client_json, entry_json and event_json are here for _cli.py, which reads them from this
# module until it imports them from _messages.
__all__ = ["Api", "client_json", "entry_json", "event_json", "render_metrics"]

# Lines encoded between two checkpoints when answering with many entries.
ENCODE_CHUNK_LINES = 5_000

_HTML = "text/html; charset=utf-8"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Api:
    """The handlers of every route over one registry.

    ``connection_stats`` gives the TCP server's (open connections, replies dropped) for
    ``/metrics`` (by default: connected clients, 0).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        page: bytes,
        tail_options: TailOptions,
        connection_stats: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.registry = registry
        self.page = page
        self.tail_options = tail_options
        self.connection_stats = connection_stats or (lambda: (registry.connected_count, 0))

    def routes(self) -> list[Route]:
        """The route table: method and path pattern → handler (see ``_routes``)."""
        return [
            Route("GET", "/healthz", self.healthz, public=True),
            Route("GET", "/", self.status_page),
            Route("GET", "/metrics", self.metrics),
            Route("GET", "/api/clients", self.clients),
            Route("GET", "/api/clients/{name}", self.client),
            Route("GET", "/api/clients/{name}/log", self.client_log),
            Route("GET", "/api/clients/{name}/state", self.client_state),
            Route("GET", "/api/recent", self.recent),
            Route("GET", "/api/tail", self.tail),
        ]

    async def healthz(self, request: ApiRequest) -> Reply:
        return json_reply(200, {"status": "ok"})

    async def status_page(self, request: ApiRequest) -> Reply:
        return Reply(200, self.page, _HTML)

    async def metrics(self, request: ApiRequest) -> Reply:
        connections, dropped = self.connection_stats()
        text = render_metrics(
            self.registry,
            open_connections=connections,
            replies_dropped=dropped,
            tail_subscribers=self.tail_options.subscribers,
            tail_lagged_events=self.tail_options.lagged_total,
        )
        return Reply(200, text.encode(), _PROMETHEUS)

    async def clients(self, request: ApiRequest) -> Reply:
        lines = request.query.integer("lines", 0) or 0
        bodies = [self._client_body(name, lines) for name in self.registry.names()]
        return Reply(200, clients_payload(bodies, self.registry.last_seq))

    async def client(self, request: ApiRequest) -> Reply:
        return Reply(200, self._client_body(self._known(request.params["name"]), None))

    async def client_log(self, request: ApiRequest) -> Reply:
        return await self._entries(request, self._known(request.params["name"]), named=True)

    async def client_state(self, request: ApiRequest) -> Reply:
        name = self._known(request.params["name"])
        return json_reply(200, state_json(name, self.registry.state(name)))

    async def recent(self, request: ApiRequest) -> Reply:
        client = request.query.client()
        known = None if client is None else self._known(client)
        return await self._entries(request, known, named=False)

    async def tail(self, request: ApiRequest) -> Upgrade:
        if not request.websocket or request.method != "GET":
            upgrade = (("upgrade", "websocket"), ("connection", "upgrade"))
            raise HttpError(426, "upgrade-required", "/api/tail is a WebSocket", upgrade)
        client = request.query.client()
        since = request.query.integer("since", 0)
        registry, options = self.registry, self.tail_options

        async def serve(
            stream: anyio.abc.ByteStream, ws: WSConnection, send_timeout: float
        ) -> None:
            await run_tail(
                stream,
                ws,
                registry,
                client=client,
                since=since,
                options=options,
                send_timeout=send_timeout,
            )

        return Upgrade(serve)

    async def _entries(self, request: ApiRequest, client: str | None, *, named: bool) -> Reply:
        """``entries_payload`` of every client's (or one ``client``'s, ``named`` in the
        answer if ``named``) entries for ``since``/``limit``: a snapshot of the registry's runs
        (cheap), encoded with a checkpoint every ENCODE_CHUNK_LINES lines, so a large answer
        never stalls ingest or the tails."""
        since = request.query.integer("since", 0) or 0
        limit = request.query.integer("limit", 1)
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
        return Reply(200, entries_payload(client if named else None, entries, last_seq))

    def _client_body(self, name: str, lines: int | None) -> bytes:
        """``name``'s record with its newest ``lines`` lines (all if None)."""
        registry = self.registry
        summary = registry.client(name, log_limit=0)
        runs = registry.backlog(0, name) if lines is None else registry.newest(name, lines)
        return client_payload(summary, runs)

    def _known(self, name: str) -> str:
        """``name`` if the registry knows it; raises HttpError (400 or 404) otherwise."""
        if not is_valid_name(name):
            raise HttpError(400, "bad-request", f"invalid client name: {name!r}")
        try:
            self.registry.oldest_seq(name)
        except NoSuchClient:
            raise HttpError(404, "no-such-client", f"no such client: {name}") from None
        return name


def _metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, int]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines)


def render_metrics(
    registry: Registry,
    *,
    open_connections: int,
    replies_dropped: int,
    tail_subscribers: int,
    tail_lagged_events: int,
) -> str:
    """The Prometheus text exposition format (version 0.0.4) of the server's counters."""
    stats = registry.stats
    connected = registry.connected_count
    retained = len(registry.names()) - connected
    errors = [(f'{{code="{code.value}"}}', stats.errors.get(code.value, 0)) for code in ErrorCode]
    families = [
        _metric("logatron_connections", "gauge", "Open TCP connections.", [("", open_connections)]),
        _metric(
            "logatron_connections_total",
            "counter",
            "Clients that identified themselves since start.",
            [("", stats.connections_total)],
        ),
        _metric(
            "logatron_clients",
            "gauge",
            "Client records by status.",
            [('{status="connected"}', connected), ('{status="retained"}', retained)],
        ),
        _metric(
            "logatron_lines_received_total",
            "counter",
            "Log lines stored.",
            [("", stats.lines_received)],
        ),
        _metric(
            "logatron_bytes_received_total",
            "counter",
            "Bytes received from TCP clients.",
            [("", stats.bytes_received)],
        ),
        _metric(
            "logatron_lines_evicted_total",
            "counter",
            "Log lines evicted from full ring buffers.",
            [("", stats.lines_evicted)],
        ),
        _metric(
            "logatron_lines_truncated_total",
            "counter",
            "Log lines cut at the line limit.",
            [("", stats.lines_truncated)],
        ),
        _metric("logatron_errors_total", "counter", "ERR replies sent, by code.", errors),
        _metric(
            "logatron_replies_dropped_total",
            "counter",
            "Replies dropped for peers that do not read.",
            [("", replies_dropped)],
        ),
        _metric(
            "logatron_subscribers",
            "gauge",
            "Registry subscribers (tails and event streams).",
            [("", registry.subscriber_count)],
        ),
        _metric(
            "logatron_tail_subscribers",
            "gauge",
            "Open WebSocket tails.",
            [("", tail_subscribers)],
        ),
        _metric(
            "logatron_tail_lagged_events_total",
            "counter",
            "Tail messages dropped for subscribers that could not keep up.",
            [("", tail_lagged_events)],
        ),
        _metric(
            "logatron_subscriber_errors_total",
            "counter",
            "Exceptions raised by registry subscribers.",
            [("", stats.subscriber_errors)],
        ),
    ]
    return "\n".join(families) + "\n"
