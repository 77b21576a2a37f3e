"""Every JSON shape the HTTP API and the WebSocket tail send: pure functions, no I/O.

The shapes are the API's contract (README.md, "HTTP API" and "The tail"); the consumer
library, the ``logatron`` consumer commands (``--json``) and the status page read exactly these.

Two ways to build them, one shape:
- log lines, the bulk of every answer, are encoded straight from the registry's runs by
  ``run_payloads`` (the parts a run's lines share built once, ~0.6 us a line against ~4 us
  through a dict and ``json.dumps``): a tail must keep up with ingest and ``/api/recent`` may
  answer with every buffered line. ``test_tail_encoding.py`` checks it against ``entry_json``.
- everything else (one message per tail event or per answer) is a dict made here and encoded
  by ``dumps``.

One function, ``tail_event_json``, gives every tail message but the fast path's: the server
uses it for its notices and for registry events, and a program relaying a consumer's
``TailEvent`` (``logatron tail --json``) uses it to print the server's own shapes. The tail's
notices ``Current`` and ``Gap`` are the consumer's event types (defined in ``_decode.py``,
re-exported here), so the server builds its notices from the very types a consumer decodes.

Decoding stays with the consumer, in ``_decode.py``: it belongs to the consumer's error model
(a reply of the wrong shape raises its ``BadResponse``), is lenient where the server is strict
(``truncated`` may be missing), and runs in processes that never serve. ``test_tail_encoding.py``
round-trips every tail message through ``tail_event_json`` and the consumer's decoder, which
keeps the two in step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from json.encoder import encode_basestring
from typing import Any, assert_never

from logatron_core import (
    ClientClosed,
    ClientExpired,
    ClientInfo,
    ClientReady,
    LogEntry,
    Logged,
    RegistryEvent,
    StateSet,
)

from ._decode import Current, Gap, TailEvent
from ._stream import Lagged

__all__ = [
    "Current",
    "Gap",
    "client_json",
    "client_payload",
    "clients_payload",
    "dumps",
    "entries_payload",
    "entry_json",
    "error_json",
    "run_payloads",
    "state_json",
    "tail_event_json",
    "tail_payloads",
]


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding of every answer and tail message."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def error_json(code: str, message: str) -> dict[str, str]:
    """Every error answer: ``{"error": message, "code": code}``."""
    return {"error": message, "code": code}


# -- log entries ---------------------------------------------------------------------------------


def entry_json(entry: LogEntry) -> dict[str, Any]:
    """One log entry (a tail's ``log`` message is this with ``"type": "log"`` first)."""
    return {
        "client": entry.client,
        "seq": entry.seq,
        "timestamp": entry.timestamp,
        "message": entry.message,
        "truncated": entry.truncated,
    }


def run_payloads(run: Logged, *, tail: bool = False, limit: int | None = None) -> list[bytes]:
    """The first ``limit`` lines of a run as JSON objects (``entry_json``'s shape, with
    ``"type": "log"`` first for a tail), the parts every line shares built once."""
    kind = '"type":"log",' if tail else ""
    head = f'{{{kind}"client":{encode_basestring(run.name)},"seq":'
    middle = f',"timestamp":{run.timestamp!r},"message":'
    end = ',"truncated":true}' if run.truncated else ',"truncated":false}'
    messages = run.messages if limit is None else run.messages[:limit]
    return [
        f"{head}{seq}{middle}{encode_basestring(message)}{end}".encode()
        for seq, message in enumerate(messages, run.first_seq)
    ]


def entries_payload(client: str | None, entries: Iterable[bytes], last_seq: int) -> bytes:
    """``/api/recent`` (``client`` None) and a client's log: ``{["client",] "entries",
    "last_seq"}``, the entries already encoded by ``run_payloads``."""
    fields = b"" if client is None else b'"client":' + dumps(client) + b","
    return b'{%s"entries":[%s],"last_seq":%d}' % (fields, b",".join(entries), last_seq)


# -- client records ------------------------------------------------------------------------------


def client_json(info: ClientInfo) -> dict[str, Any]:
    """One client's record, its log last."""
    return {
        "name": info.name,
        "connected": info.connected,
        "connected_at": info.connected_at,
        "disconnected_at": info.disconnected_at,
        "state": info.state,
        "lines_received": info.lines_received,
        "lines_evicted": info.lines_evicted,
        "errors": info.errors,
        "log": [entry_json(entry) for entry in info.log],
    }


def client_payload(summary: ClientInfo, runs: Iterable[Logged]) -> bytes:
    """``client_json`` of a record read without its log (``summary``), the log encoded from
    the stored ``runs`` instead: even every client's whole buffer answers quickly."""
    empty = dumps(client_json(summary))
    assert empty.endswith(b'"log":[]}'), "client_json puts the log last"
    log = b",".join(payload for run in runs for payload in run_payloads(run))
    return empty[: -len(b"[]}")] + b"[" + log + b"]}"


def clients_payload(clients: Iterable[bytes], last_seq: int) -> bytes:
    """``/api/clients``: ``{"clients": [client_payload…], "last_seq": N}``."""
    return b'{"clients":[%s],"last_seq":%d}' % (b",".join(clients), last_seq)


def state_json(name: str, state: dict[str, str]) -> dict[str, Any]:
    return {"client": name, "state": state}


# -- the tail ------------------------------------------------------------------------------------


def tail_event_json(event: TailEvent) -> dict[str, Any]:
    """The tail message for one event, as the server sends it (``log`` lines it sends through
    ``run_payloads``; this covers them too, for events a consumer received)."""
    if isinstance(event, LogEntry):
        return {"type": "log", **entry_json(event)}
    if isinstance(event, StateSet):
        return {
            "type": "set",
            "client": event.name,
            "key": event.key,
            "value": event.value,
            "timestamp": event.timestamp,
        }
    if isinstance(event, ClientReady):
        return {"type": "ready", "client": event.name, "timestamp": event.timestamp}
    if isinstance(event, ClientClosed):
        return {"type": "close", "client": event.name, "timestamp": event.timestamp}
    if isinstance(event, ClientExpired):
        return {"type": "expired", "client": event.name, "timestamp": event.timestamp}
    if isinstance(event, Current):
        return {"type": "current", "last_seq": event.last_seq}
    if isinstance(event, Gap):
        return {"type": "gap", "missed": event.missed}
    if isinstance(event, Lagged):
        return {"type": "lagged", "missed": event.missed}
    assert_never(event)


def tail_payloads(item: RegistryEvent | Lagged | Current | Gap) -> list[bytes]:
    """What the tail sends for one item of its queue (or its gap and current notices)."""
    if isinstance(item, Logged):
        return run_payloads(item, tail=True)
    return [dumps(tail_event_json(item))]
