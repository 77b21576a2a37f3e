"""Runs kept as bytes: reads give back exactly what was stored, and eviction stays exact."""

from hypothesis import example, given
from hypothesis import strategies as st

from core_helpers import ALPHABET, cut, run
from logatron_core import Lines, Log, Logged, MemoryStore, Registry, RegistryEvent, Session
from logatron_core._connection import log_messages
from logatron_core._lines import line_tail, parse_quoted, parse_text

line_bodies = st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12)
messages = st.lists(st.text(), max_size=8)


@given(line_bodies, st.integers(-1, 14))
@example([b"a", b"bbbbbbbbbb", b"c"], 1)
@example([b"aaaaaaaaaa", b"b", b"c"], 2)
@example([b"", b"", b"x" * 12], 1)
def test_line_tail_keeps_the_last_lines(lines: list[bytes], keep: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    kept = lines[max(0, len(lines) - keep) :] if keep > 0 else []
    assert line_tail(data, len(lines), keep) == b"".join(line + b"\n" for line in kept)


@given(messages, st.integers(0, 9))
@example(["a\nb", "c"], 1)
@example(["\ud800", "\udfff x", ""], 2)
@example(["x\r", "\r\n", "\u2028"], 3)
def test_messages_read_back_exactly_from_their_bytes(texts: list[str], keep: int) -> None:
    lines = Lines(texts)
    data, parse = lines.encoded()
    assert parse is (parse_quoted if any("\n" in text for text in texts) else parse_text)
    again = Lines.from_bytes(data, len(texts), parse)
    assert again == lines == tuple(texts)
    assert list(again) == texts and len(again) == len(texts)
    assert hash(again) == hash(tuple(texts))
    tail = again.tail(keep)
    assert tail == tuple(texts[max(0, len(texts) - keep) :] if keep else ())
    assert len(tail) == min(keep, len(texts))


def test_lines_from_the_wire_are_parsed_once_and_only_when_read() -> None:
    calls: list[bytes] = []

    def parse(data: bytes) -> list[str]:
        calls.append(data)
        return list(log_messages(data))

    lines = Lines.from_bytes(b"LOG a  \r\nLOG b\n", 2, parse)
    assert len(lines) == 2 and bool(lines) and calls == []
    assert lines == ("a", "b") and lines[1] == "b" and lines[:1] == ("a",)
    assert len(calls) == 1
    assert repr(lines) == "Lines(('a', 'b'))"
    assert lines.tail(1) == ("b",) and lines.tail(5) is lines


def followed(registry: Registry) -> tuple[Session, list[Logged]]:
    """A session on ``registry``, and the Logged events it will cause."""
    logged: list[Logged] = []
    registry.subscribe(lambda event: logged.append(event) if isinstance(event, Logged) else None)
    return Session(registry), logged


def test_a_run_from_the_wire_stays_the_bytes_it_arrived_in() -> None:
    session, events = followed(Registry())
    session.receive_data(b"IAM a\nLOG one\nLOG two \r\nPING\n", 1.0)
    (logged,) = events
    assert isinstance(logged.messages, Lines)
    assert logged.messages.encoded() == (b"LOG one\nLOG two \r\n", log_messages)
    assert logged == Logged("a", 1, 1.0, ("one", "two"))
    assert session.data_to_send() == b"PONG\n"


streams = st.lists(st.sampled_from(ALPHABET), max_size=60).map(b"".join)


@given(streams, st.lists(st.integers(0, 1000), max_size=8), st.integers(1, 5), st.integers(1, 9))
@example(b"LOG a \r\nLOG \xc3\nLOG b\nPING\nLOG c\n", [9], 2, 12)
@example(b"LOG aaaaaaaaaaaaaaa\nLOG b\n", [], 3, 6)
@example(b"LOG a\nLOG b\nLOG c\nX\n", [3], 1, 12)
def test_the_store_reads_back_what_the_lines_said(
    data: bytes, cuts: list[int], buffer_size: int, limit: int
) -> None:
    """Whatever the chunks, a client's log is the newest ``buffer_size`` of its messages as the
    connection parses them (U+FFFD, truncation, ``\\r``), with consecutive seqs; subscribers
    see every one of them; the journal's view of the record agrees."""
    stream = b"IAM a\n" + data
    expected_events, error = run([stream], max(limit, 6))
    assert error is None
    expected = [
        (message, event.truncated)
        for event in expected_events
        if isinstance(event, Log)
        for message in event.messages
    ]
    store = MemoryStore()
    registry = Registry(store, buffer_size=buffer_size)
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    session = Session(registry, max_line_bytes=max(limit, 6))
    for chunk in [*cut(stream, cuts), b""]:
        session.receive_data(chunk, 1.0)
    logged = [event for event in events if isinstance(event, Logged)]
    seen = [(message, event.truncated) for event in logged for message in event.messages]
    assert seen == expected
    log = registry.log("a")
    assert [(entry.message, entry.truncated) for entry in log] == expected[-buffer_size:]
    total = len(expected)
    assert [entry.seq for entry in log] == list(range(total - len(log) + 1, total + 1))
    for since in range(total + 1):
        assert registry.log("a", since) == [entry for entry in log if entry.seq > since]
        runs = registry.snapshot(since).runs
        assert [entry for run in runs for entry in run.entries()] == registry.log("a", since)
    for count in range(buffer_size + 2):
        newest = [entry for run in registry.newest("a", count) for entry in run.entries()]
        assert newest == (log[-count:] if count else [])
    info = registry.client("a")
    assert info.lines_received == total and info.lines_evicted == total - len(log)
    assert store.stored_client("a").oldest_seq == (log[0].seq if log else total + 1)


def test_lines_never_keep_a_buffer_the_caller_may_change() -> None:
    registry = Registry()
    session, events = followed(registry)
    session.receive_data(b"IAM a\n", 1.0)
    buffer = bytearray(b"LOG one\n")
    session.receive_data(buffer, 1.0)  # type: ignore[arg-type]
    buffer[4:7] = b"two"
    assert [event.messages for event in events] == [("one",)]
    assert [entry.message for entry in registry.log("a")] == ["one"]
