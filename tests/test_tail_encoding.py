"""The tail writes its own text frames and log JSON (for speed): both must be exactly valid."""

import json

from hypothesis import given
from hypothesis import strategies as st
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request, TextMessage

from logatron_anyio._api import entry_json, run_payloads
from logatron_anyio._tail import _text_frame
from logatron_core import Logged


@given(
    st.text(min_size=1, max_size=20),
    st.integers(1, 2**53),
    st.floats(0, 4e9, allow_nan=False),
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
    entries = [entry_json(entry) for entry in run.entries()][:limit]
    assert [json.loads(p) for p in run_payloads(run, limit=limit)] == entries
    tail = [json.loads(p) for p in run_payloads(run, tail=True)]
    assert tail == [{"type": "log", **entry} for entry in entry_json_all(run)]


def entry_json_all(run: Logged) -> list[dict[str, object]]:
    return [entry_json(entry) for entry in run.entries()]


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
