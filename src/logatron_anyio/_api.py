"""The Prometheus metrics text of the server's counters: a pure function, no I/O.

The JSON shapes of the API are in ``_messages``.
"""

from __future__ import annotations

from collections.abc import Iterable

from logatron_core import ErrorCode, Registry

from ._messages import client_json, entry_json
from ._messages import tail_event_json as event_json

# client_json, entry_json and event_json are here for _cli.py, which reads them from this
# module until it imports them from _messages.
__all__ = ["client_json", "entry_json", "event_json", "render_metrics"]


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
