"""The tail writes its own text frames and log JSON (for speed): both must be exactly valid,
and every message shape must decode, in the consumer, to the event it was made from."""

import json

from hypothesis import given
from hypothesis import strategies as st
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request, TextMessage

from logatron_anyio import Current, Gap, Lagged, TailEvent
from logatron_anyio._decode import decode_tail_event
from logatron_anyio._messages import (
    dumps,
    entry_json,
    run_payloads,
    tail_event_json,
    tail_payloads,
)
from logatron_anyio._tail import _text_frame, newest_runs
from logatron_core import ClientClosed, ClientReady, LogEntry, Logged, StateSet

names = st.text(min_size=1, max_size=20)
timestamps = st.floats(0, 4e9, allow_nan=False)
counts = st.integers(0, 2**53)


@given(
    names,
    st.integers(1, 2**53),
    timestamps,
    st.lists(st.text(), max_size=5),
    st.booleans(),
    st.none() | st.integers(0, 6),
)
def test_run_payloads_are_the_api_json(
    client: str,
    first: int,
    timestamp: float,
    messages: list[str],
    truncated: bool,
    limit: int | None,
) -> None:
    run = Logged(client, first, timestamp, tuple(messages), truncated)
    entries = [entry_json(entry) for entry in run.entries()]
    assert [json.loads(p) for p in run_payloads(run, limit=limit)] == entries[:limit]
    tail = [json.loads(p) for p in tail_payloads(run)]
    assert tail == [tail_event_json(entry) for entry in run.entries()]
    assert tail == [{"type": "log", **entry} for entry in entries]


tail_events: st.SearchStrategy[TailEvent] = st.one_of(
    st.builds(LogEntry, names, st.integers(1, 2**53), timestamps, st.text(), st.booleans()),
    st.builds(StateSet, names, names, st.text(), timestamps),
    st.builds(ClientReady, names, timestamps),
    st.builds(ClientClosed, names, timestamps),
    st.builds(Current, counts),
    st.builds(Gap, counts),
    st.builds(Lagged, counts),
)


@given(tail_events)
def test_every_tail_message_decodes_to_its_event(event: TailEvent) -> None:
    assert decode_tail_event(json.loads(dumps(tail_event_json(event)))) == event


@given(tail_events.filter(lambda event: not isinstance(event, LogEntry)))
def test_the_server_sends_the_consumers_shapes(event: TailEvent) -> None:
    assert not isinstance(event, LogEntry)
    assert tail_payloads(event) == [dumps(tail_event_json(event))]


def test_each_tail_message_has_its_documented_shape() -> None:
    shapes: dict[TailEvent, list[str]] = {
        LogEntry("a", 3, 1.5, "hi", False): ["type", "client", "seq", "timestamp", "message"],
        StateSet("a", "k", "v", 1.5): ["type", "client", "key", "value", "timestamp"],
        ClientReady("a", 1.5): ["type", "client", "timestamp"],
        ClientClosed("a", 1.5): ["type", "client", "timestamp"],
        Current(7): ["type", "last_seq"],
        Gap(2): ["type", "missed"],
        Lagged(2): ["type", "missed"],
    }
    for event, keys in shapes.items():
        message = tail_event_json(event)
        assert [key for key in message if key != "truncated"] == keys


def test_text_frames_of_every_length_class_decode() -> None:
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/api/tail")))
    assert [type(e) for e in server.events()] == [Request]
    client.receive_data(server.send(AcceptConnection()))
    assert [type(e) for e in client.events()] == [AcceptConnection]
    for length in (0, 125, 126, 65535, 65536, 200_000):
        payload = ("é" * length).encode()[:length] if length % 2 == 0 else b"a" * length
        client.receive_data(_text_frame(payload))
        text = "".join(e.data for e in client.events() if isinstance(e, TextMessage))
        assert text.encode() == payload


@given(st.lists(st.integers(1, 4), max_size=6), st.integers(0, 20))
def test_newest_runs_are_the_newest_lines(sizes: list[int], count: int) -> None:
    """``?tail=N``'s cut: the newest N lines, as runs (the oldest one kept may be cut)."""
    runs, seq = [], 1
    for index, size in enumerate(sizes):
        messages = tuple(f"m{seq + i}" for i in range(size))
        runs.append(Logged(f"c{index % 2}", seq, float(index), messages, index == 3))
        seq += size
    flat = [entry for run in runs for entry in run.entries()]
    kept = newest_runs(runs, count)
    assert [entry for run in kept for entry in run.entries()] == flat[max(0, len(flat) - count) :]
    assert all(run.messages for run in kept)
