"""The client-side encoder and reply parser, and the client -> server round trip."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core_helpers import run
from logatron_core import (
    NEED_DATA,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    ErrorCode,
    ErrorReply,
    Identify,
    LocalProtocolError,
    Log,
    Ping,
    Pong,
    RemoteProtocolError,
    ServerEvent,
    SetState,
)
from logatron_core._wire import TRIM

names = st.text("abZ09_-.:@", min_size=1, max_size=128)
texts = st.lists(
    st.sampled_from(["a", " ", "\t", "\n", "\r", "é", "\u2028", "LOG", "SET x y"]), max_size=12
).map("".join)
single_line_texts = texts.map(lambda text: text.replace("\n", "").replace("\r", ""))


@given(
    names,
    st.lists(
        st.one_of(
            texts.map(lambda message: Log((message,))),
            st.tuples(names, single_line_texts).map(lambda kv: SetState(*kv)),
            single_line_texts.map(Ping),
        ),
        max_size=10,
    ),
)
def test_what_a_client_sends_the_server_parses_back(
    name: str, sent: list[Log | SetState | Ping]
) -> None:
    client = ClientConnection()
    data = client.send(Identify(name)) + b"".join(client.send(event) for event in sent)
    expected: list[ServerEvent] = [Identify(name)]
    for event in sent:
        if isinstance(event, Log):
            lines = event.messages[0].replace("\r\n", "\n").split("\n")
            # a "\r" that ends a line goes out just before the newline, and is dropped there;
            # a message keeps its leading whitespace
            expected.extend(Log((line.removesuffix("\r").rstrip(TRIM),)) for line in lines)
        elif isinstance(event, SetState):
            expected.append(SetState(event.key, event.value.strip(TRIM)))
        else:
            expected.append(Ping(event.token.strip(TRIM)))
    events, error = run([data])
    assert error is None
    assert events == [*expected, ConnectionClosed()]


def test_a_message_cannot_inject_a_command() -> None:
    client = ClientConnection()
    data = client.send(Identify("a")) + client.send(Log(("a\nSET x y", "b\r\nIAM z")))
    events, _ = run([data])
    assert events == [
        Identify("a"),
        Log(("a",)),
        Log(("SET x y",)),
        Log(("b",)),
        Log(("IAM z",)),
        ConnectionClosed(),
    ]


@pytest.mark.parametrize(
    "event",
    [Log(("x",)), SetState("k", "v"), Ping("t")],
)
def test_nothing_may_precede_iam(event: Log | SetState | Ping) -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send(event)
    assert client.state is ClientState.AWAIT_IAM


@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "semi;colon", "new\nline"])
def test_invalid_names_and_keys_are_refused_and_change_nothing(name: str) -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send(Identify(name))
    assert client.state is ClientState.AWAIT_IAM
    client.send(Identify("ok"))
    with pytest.raises(LocalProtocolError):
        client.send(SetState(name, "v"))
    with pytest.raises(LocalProtocolError):
        client.send(Identify("again"))


@pytest.mark.parametrize("event", [SetState("k", "a\nb"), Ping("a\rb")])
def test_line_breaks_outside_messages_are_refused(event: SetState | Ping) -> None:
    client = ClientConnection()
    client.send(Identify("a"))
    with pytest.raises(LocalProtocolError):
        client.send(event)


def test_replies_are_parsed() -> None:
    client = ClientConnection()
    client.receive_data(b"PONG 1\r\nERR too-many-keys no room here\nPO")
    assert client.next_event() == Pong("1")
    assert client.next_event() == ErrorReply(ErrorCode.TOO_MANY_KEYS, "no room here")
    assert client.next_event() is NEED_DATA
    client.receive_data(b"NG\n")
    assert client.next_event() == Pong("")
    client.receive_data(b"")
    assert client.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError):
        client.receive_data(b"PONG\n")


@pytest.mark.parametrize("line", [b"HELLO\n", b"ERR no-such-code text\n", b"ERR\n"])
def test_unexpected_replies_are_a_remote_error(line: bytes) -> None:
    client = ClientConnection()
    client.receive_data(line)
    with pytest.raises(RemoteProtocolError):
        client.next_event()


@given(st.binary(max_size=200))
def test_garbage_replies_give_events_or_remote_error(data: bytes) -> None:
    client = ClientConnection()
    if data:  # b"" would mean end of input
        client.receive_data(data)
    client.receive_data(b"")
    for _ in range(500):
        try:
            event = client.next_event()
        except RemoteProtocolError:
            return
        if event == ConnectionClosed():
            return
    raise AssertionError("no end of events")
