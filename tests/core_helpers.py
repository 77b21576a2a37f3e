"""Shared helpers for the core tests: feeding bytes in chunks and normalising events."""

import itertools
from collections.abc import Iterable, Sequence

from logatron_core import (
    NEED_DATA,
    ConnectionClosed,
    Log,
    RemoteProtocolError,
    ServerConnection,
    ServerEvent,
)

# Tokens that make the interesting cases frequent: commands, separators, line ends, a UTF-8
# lead byte without its continuation, a byte that is never valid UTF-8.
ALPHABET = [
    b"IAM a",
    b"IAM b\n",
    b"LOG ",
    b"LOG",
    b"SET k ",
    b"SET ",
    b"PING",
    b"X",
    b"a",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\xc3",
    b"\xa9",
    b"\xff",
]

Outcome = tuple[list[ServerEvent], str | None]


def flatten(events: Iterable[ServerEvent]) -> list[ServerEvent]:
    """One Log event per message, so runs split differently compare equal."""
    flat: list[ServerEvent] = []
    for event in events:
        if isinstance(event, Log):
            flat.extend(Log((message,), event.truncated) for message in event.messages)
        else:
            flat.append(event)
    return flat


def drain(connection: ServerConnection, events: list[ServerEvent]) -> str | None:
    """Collect events until more data is needed; return the fatal error code, if one is raised."""
    for _ in range(1_000_000):
        try:
            event = connection.next_event()
        except RemoteProtocolError as error:
            assert error.code is not None
            return error.code.value
        if event is NEED_DATA:
            return None
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return None
    raise AssertionError("next_event() never asked for more data")


def run(chunks: Sequence[bytes], max_line_bytes: int = 65536) -> Outcome:
    """Feed ``chunks`` then end of input; the flattened events and the fatal error code."""
    connection = ServerConnection(max_line_bytes=max_line_bytes)
    events: list[ServerEvent] = []
    assert all(chunks), "an empty chunk would mean end of input"
    for chunk in [*chunks, b""]:
        connection.receive_data(chunk)
        error = drain(connection, events)
        if error is not None:
            return flatten(events), error
    return flatten(events), None


def cut(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` split at the given offsets (empty pieces left out: b'' means end of input)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]
