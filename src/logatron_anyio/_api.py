"""The HTTP API's routes: what each one answers, read from the registry.

``Api.routes()`` is the route table (the one place to add a route); each handler takes an
``ApiRequest`` and returns a ``Reply`` (or an ``Upgrade`` for the WebSocket tail), raising
``HttpError`` for an error answer. Every registry read the HTTP layer makes is here, apart
from the tail's snapshot (``_tail.run_tail``). The shapes of the answers are in
``_messages``; ``render_metrics`` writes the Prometheus text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import anyio
import anyio.abc
import anyio.lowlevel
from wsproto import WSConnection

from logatron_core import ErrorCode, LogSource, is_valid_name

from ._durable import StoreHealth
from ._filters import ClientFilter, FilterError, LineFilter, client_filter, line_filter
from ._messages import (
    client_payload,
    clients_payload,
    entries_payload,
    run_payloads,
    state_json,
)
from ._routes import ApiRequest, HttpError, Reply, Route, Upgrade, json_reply
from ._tail import TailOptions, newest_runs, run_tail

__all__ = ["Api", "render_metrics"]

# Lines encoded between two checkpoints when answering with many entries.
ENCODE_CHUNK_LINES = 5_000

_HTML = "text/html; charset=utf-8"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Api:
    """The handlers of every route over one log source (a registry).

    ``store_health``, for a store that writes in the background (``--data-dir``), gives its
    figures for ``/healthz`` (503 while its writes fail) and ``/metrics``.
    """

    def __init__(
        self,
        registry: LogSource,
        *,
        page: bytes,
        tail_options: TailOptions,
        store_health: Callable[[], StoreHealth] | None = None,
        auth_failures: Mapping[str, int] | None = None,
    ) -> None:
        self.registry = registry
        self.auth_failures = auth_failures  # HTTP requests refused, by code (a live count)
        self.page = page
        self.tail_options = tail_options
        self.store_health = store_health

    def routes(self) -> list[Route]:
        """The route table: method and path pattern → handler (see ``_routes``)."""
        return [
            Route("GET", "/healthz", self.healthz, public=True),
            Route("GET", "/", self.status_page, public=True),  # a shell that asks for the token
            Route("GET", "/metrics", self.metrics),
            Route("GET", "/api/clients", self.clients),
            Route("GET", "/api/clients/{name}", self.client),
            Route("GET", "/api/clients/{name}/log", self.client_log),
            Route("GET", "/api/clients/{name}/state", self.client_state),
            Route("GET", "/api/recent", self.recent),
            Route("GET", "/api/tail", self.tail),
        ]

    async def healthz(self, request: ApiRequest) -> Reply:
        if self.store_health is None:
            return json_reply(200, {"status": "ok"})
        health = self.store_health()
        if health.failing:
            state = health.failed_state
            failing = {"status": "failing", "store": state, "error": health.last_error}
            return json_reply(503, failing)
        return json_reply(200, {"status": "ok", "store": "ok"})

    async def status_page(self, request: ApiRequest) -> Reply:
        return Reply(200, self.page, _HTML)

    async def metrics(self, request: ApiRequest) -> Reply:
        text = render_metrics(
            self.registry,
            tail_subscribers=self.tail_options.subscribers,
            tail_lagged_events=self.tail_options.lagged_total,
            store=None if self.store_health is None else self.store_health(),
            auth_failures=self.auth_failures,
        )
        return Reply(200, text.encode(), _PROMETHEUS)

    async def clients(self, request: ApiRequest) -> Reply:
        lines = request.query.integer("lines", 0) or 0
        bodies = [self._client_body(name, lines) for name in self.registry.names()]
        return Reply(200, clients_payload(bodies, self.registry.last_seq))

    async def client(self, request: ApiRequest) -> Reply:
        return Reply(200, self._client_body(self._valid_name(request.params["name"]), None))

    async def client_log(self, request: ApiRequest) -> Reply:
        name = self._valid_name(request.params["name"])
        return await self._entries(request, name, None, _lines(request), named=True)

    async def client_state(self, request: ApiRequest) -> Reply:
        name = self._valid_name(request.params["name"])
        return json_reply(200, state_json(name, self.registry.state(name)))

    async def recent(self, request: ApiRequest) -> Reply:
        clients = _clients(request)
        exact = None
        if clients is not None and clients.exact is not None:
            exact = self._valid_name(clients.exact)
        if exact is not None:
            clients = None  # read that client's records alone
        return await self._entries(request, exact, clients, _lines(request), named=False)

    async def tail(self, request: ApiRequest) -> Upgrade:
        if not request.websocket or request.method != "GET":
            upgrade = (("upgrade", "websocket"), ("connection", "upgrade"))
            raise HttpError(426, "upgrade-required", "/api/tail is a WebSocket", upgrade)
        clients, lines = _clients(request), _lines(request)
        since = request.query.integer("since", 0)
        newest = request.query.integer("tail", 0)
        registry, options = self.registry, self.tail_options

        async def serve(
            stream: anyio.abc.ByteStream, ws: WSConnection, send_timeout: float
        ) -> None:
            await run_tail(
                stream,
                ws,
                registry,
                clients=clients,
                lines=lines,
                since=since,
                options=options,
                send_timeout=send_timeout,
                newest=newest,
            )

        return Upgrade(serve)

    async def _entries(
        self,
        request: ApiRequest,
        client: str | None,
        clients: ClientFilter | None,
        lines: LineFilter | None,
        *,
        named: bool,
    ) -> Reply:
        """``entries_payload`` of every client's (or one ``client``'s, ``named`` in the
        answer if ``named``; or the ``clients`` a filter accepts) entries that ``lines`` keeps,
        for ``since`` and ``limit`` (the oldest N) or ``tail`` (the newest N): a snapshot of the
        registry's runs (cheap), filtered and encoded with a checkpoint every
        ENCODE_CHUNK_LINES lines, so a large answer never stalls ingest or the tails."""
        since = request.query.integer("since", 0) or 0
        limit = request.query.integer("limit", 1)
        newest = request.query.integer("tail", 0)
        if limit is not None and newest is not None:
            raise HttpError(
                400, "bad-request", "give limit (the oldest N) or tail (the newest N), not both"
            )
        snapshot = self.registry.snapshot(since, client)
        runs, last_seq = snapshot.runs, snapshot.last_seq
        if clients is not None:
            runs = clients.runs(runs)
        if newest is not None:
            runs, lines = newest_runs(runs, newest, lines), None
        entries: list[bytes] = []
        since_checkpoint = 0
        for run in runs:
            for part in [run] if lines is None else lines.runs(run):
                left = None if limit is None else limit - len(entries)
                if left == 0:
                    break
                entries += run_payloads(part, limit=left)
            if limit is not None and len(entries) >= limit:
                break
            since_checkpoint += len(run.messages)
            if since_checkpoint >= ENCODE_CHUNK_LINES:
                since_checkpoint = 0
                await anyio.lowlevel.checkpoint()
        return Reply(200, entries_payload(client if named else None, entries, last_seq))

    def _client_body(self, name: str, lines: int | None) -> bytes:
        """``name``'s record with its newest ``lines`` lines (all if None)."""
        registry = self.registry
        summary = registry.client(name, log_limit=0)
        runs = registry.snapshot(0, name).runs if lines is None else registry.newest(name, lines)
        return client_payload(summary, runs)

    def _valid_name(self, name: str) -> str:
        """``name`` if it is a valid client name; raises HttpError (400) otherwise. (A name the
        store does not know makes its query raise NoSuchClient: 404, see HttpServer.)"""
        if not is_valid_name(name):
            raise HttpError(400, "bad-request", f"invalid client name: {name!r}")
        return name


def _clients(request: ApiRequest) -> ClientFilter | None:
    """The ``client=`` patterns' filter; raises HttpError (400)."""
    try:
        return client_filter(request.query.texts("client"))
    except FilterError as error:
        raise HttpError(400, "bad-request", str(error)) from None


def _lines(request: ApiRequest) -> LineFilter | None:
    """The ``include=``/``exclude=`` patterns' filter; raises HttpError (400)."""
    query = request.query
    try:
        return line_filter(query.texts("include"), query.texts("exclude"))
    except FilterError as error:
        raise HttpError(400, "bad-request", str(error)) from None


def _metric(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[str, int | float]]
) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines)


def _one(value: int | float) -> list[tuple[str, int | float]]:
    return [("", value)]


def render_metrics(
    registry: LogSource,
    *,
    tail_subscribers: int,
    tail_lagged_events: int,
    store: StoreHealth | None = None,
    auth_failures: Mapping[str, int] | None = None,
) -> str:
    """The Prometheus text exposition format (version 0.0.4) of the server's counters (and of
    its durable store's, when it has one; and the HTTP requests refused for their token)."""
    stats = registry.stats
    errors = [(f'{{code="{code.value}"}}', stats.errors.get(code.value, 0)) for code in ErrorCode]
    clients = [('{status="connected"}', stats.connected), ('{status="retained"}', stats.retained)]
    families = [
        _metric("logatron_connections", "gauge", "Open TCP connections.",
                _one(stats.connections_open)),
        _metric("logatron_connections_total", "counter",
                "Clients that identified themselves since start.", _one(stats.connections_total)),
        _metric("logatron_clients", "gauge", "Client records by status.", clients),
        _metric("logatron_clients_expired_total", "counter",
                "Retained client records forgotten (past the retention age or count).",
                _one(stats.clients_expired)),
        _metric("logatron_lines_received_total", "counter", "Log lines stored.",
                _one(stats.lines_received)),
        _metric("logatron_bytes_received_total", "counter", "Bytes received from TCP clients.",
                _one(stats.bytes_received)),
        _metric("logatron_lines_evicted_total", "counter",
                "Log lines evicted from full ring buffers.", _one(stats.lines_evicted)),
        _metric("logatron_lines_truncated_total", "counter", "Log lines cut at the line limit.",
                _one(stats.lines_truncated)),
        _metric("logatron_errors_total", "counter", "ERR replies sent, by code.", errors),
        _metric("logatron_replies_dropped_total", "counter",
                "Replies dropped for peers that do not read.", _one(stats.replies_dropped)),
        _metric("logatron_subscribers", "gauge",
                "Registry subscribers (tails and event streams).", _one(stats.subscribers)),
        _metric("logatron_tail_subscribers", "gauge", "Open WebSocket tails.",
                _one(tail_subscribers)),
        _metric("logatron_tail_lagged_events_total", "counter",
                "Tail messages dropped for subscribers that could not keep up.",
                _one(tail_lagged_events)),
        _metric("logatron_subscriber_errors_total", "counter",
                "Exceptions raised by registry subscribers.", _one(stats.subscriber_errors)),
    ]  # fmt: skip
    if auth_failures is not None:
        refused = [
            (f'{{code="{code}"}}', auth_failures.get(code, 0))
            for code in ("unauthorized", "forbidden")
        ]
        families.append(_metric("logatron_http_auth_failures_total", "counter",
                                "HTTP requests refused: no valid token (401), may not read (403).",
                                refused))  # fmt: skip
    if store is not None:
        families += [
            _metric("logatron_store_failing", "gauge",
                    "1 while the last write to the store failed.", _one(int(store.failing))),
            _metric("logatron_store_flushes_total", "counter", "Batches written to the store.",
                    _one(store.flushes)),
            _metric("logatron_store_failed_flushes_total", "counter",
                    "Writes to the store that failed (kept for the next one).",
                    _one(store.failed_flushes)),
            _metric("logatron_store_rows_written_total", "counter",
                    "Rows (Redis: commands) written to the store.", _one(store.rows_written)),
            _metric("logatron_store_flush_seconds_total", "counter",
                    "Time spent writing batches.", _one(round(store.flush_seconds, 6))),
            _metric("logatron_store_last_flush_seconds", "gauge",
                    "How long the last batch took to write.",
                    _one(round(store.last_flush_seconds, 6))),
        ]  # fmt: skip
    return "\n".join(families) + "\n"
