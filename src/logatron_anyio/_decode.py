"""What a consumer reads: the API's JSON decoded into the core's records and events and the
tail's notices (``Current``, ``Gap``), and the consumer's errors, one per way a request fails.

The decoders are lenient where the server is strict (``truncated`` may be missing) and raise
:class:`BadResponse` for JSON of the wrong shape; ``_messages`` holds the encoders they mirror.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

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
    "ConsumerError",
    "Current",
    "Gap",
    "NotFound",
    "TailEvent",
    "Unauthorized",
    "Unreachable",
    "convert",
    "decode_client",
    "decode_entry",
    "decode_tail_event",
    "parse_json",
    "sort_entries",
    "status_error",
]


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


def decode_entry(data: dict[str, Any]) -> LogEntry:
    return LogEntry(
        str(data["client"]),
        int(data["seq"]),
        float(data["timestamp"]),
        str(data["message"]),
        bool(data.get("truncated", False)),
    )


def decode_client(data: dict[str, Any]) -> ClientInfo:
    disconnected_at = data.get("disconnected_at")
    return ClientInfo(
        str(data["name"]),
        bool(data["connected"]),
        float(data["connected_at"]),
        None if disconnected_at is None else float(disconnected_at),
        {str(k): str(v) for k, v in data["state"].items()},
        [decode_entry(entry) for entry in data.get("log", [])],
        int(data["lines_received"]),
        int(data["lines_evicted"]),
        int(data["errors"]),
    )


def decode_tail_event(data: dict[str, Any]) -> TailEvent:
    kind = data["type"]
    if kind == "log":
        return decode_entry(data)
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


def convert(decoder: Callable[[Any], _T], body: Any) -> _T:
    """``decoder(body)``; JSON of the wrong shape raises BadResponse."""
    try:
        return decoder(body)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadResponse(f"unexpected JSON from the server: {error!r}") from None


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BadResponse(f"not JSON: {body[:80]!r}") from None


def status_error(status: int, body: bytes) -> ConsumerError:
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
