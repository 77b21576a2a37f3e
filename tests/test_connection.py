"""The server-side protocol state machine: events, errors, chunking invariance, garbage."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core_helpers import ALPHABET, cut, drain, run
from logatron_core import (
    NEED_DATA,
    ConnectionClosed,
    ConnectionState,
    ErrorCode,
    Identify,
    Log,
    Ping,
    Rejected,
    RemoteProtocolError,
    ServerConnection,
    ServerEvent,
    SetState,
)
from logatron_core._connection import TRANSITIONS, LineKind, Outcome, classify
from logatron_core._wire import split_command

streams = st.lists(st.sampled_from(ALPHABET), max_size=40).map(b"".join)


def events_of(data: bytes, max_line_bytes: int = 65536) -> list[ServerEvent]:
    events, error = run([data], max_line_bytes)
    assert error is None
    return events


@given(streams, st.integers(1, 12), st.lists(st.integers(0, 1000), max_size=10))
@example(b"IAM b\nLOG a \r\nLOG\n", 12, [7])
@example(b"IAM b\nLOG \xc3\n", 5, [9])
def test_same_events_however_the_bytes_are_chunked(
    data: bytes, limit: int, cuts: list[int]
) -> None:
    whole = run([data] if data else [], limit)
    assert run([data[i : i + 1] for i in range(len(data))], limit) == whole
    assert run(cut(data, cuts), limit) == whole


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_gives_events_or_bad_iam(data: bytes, cuts: list[int]) -> None:
    events, error = run(cut(data, cuts), 16)
    assert error in (None, "bad-iam")
    if error is None:
        assert events[-1] == ConnectionClosed()


@given(st.binary(max_size=300))
@example(b"PING a\rb\n")
def test_garbage_after_iam_never_fails(data: bytes) -> None:
    events, error = run([b"IAM x\n" + data], 16)
    assert error is None and events[0] == Identify("x")


line_text = st.lists(
    st.sampled_from(["LOG", " ", "\t", "a", "b c", "\r", "\u2028", "LOGa", "é"]), max_size=8
).map("".join)
# Mostly LOG lines, so that whole blocks of them (the fast path) are frequent.
log_shaped = st.tuples(st.sampled_from(["LOG ", "LOG", "LOG\t", "LOG  ", ""]), line_text).map(
    "".join
)
log_lines = st.lists(st.one_of(log_shaped, line_text), min_size=1, max_size=20)


@given(log_lines)
@example(["LOG a ", "LOG b"])
@example(["LOG  a", "LOG b"])
@example(["LOG a", "LOG\tb"])
@example(["LOG a\r", "LOG b \r"])
@example(["LOG a", "LOG"])
def test_block_of_log_lines_matches_line_by_line_parsing(lines: list[str]) -> None:
    """The one-regex path for runs of LOG lines agrees with the per-line grammar."""
    data = "".join(f"{line}\n" for line in lines).encode()
    events = events_of(b"IAM x\n" + data)
    expected: list[ServerEvent] = [Identify("x")]
    for line in data.decode().replace("\r\n", "\n").split("\n")[:-1]:
        command, argument = split_command(line)
        if command == "LOG":
            expected.append(Log((argument,)))
        elif command:
            expected.append(Rejected(ErrorCode.UNKNOWN_COMMAND, "unknown command"))
    assert events == [*expected, ConnectionClosed()]


def test_protocol_round_up() -> None:
    data = b"IAM bob\nLOG hello\nLOG  two words  \r\nLOG\nSET k  v w \nSET k\nPING t\nPING\n"
    assert events_of(data) == [
        Identify("bob"),
        Log(("hello",)),
        Log((" two words",)),
        Log(("",)),
        SetState("k", "v w"),
        SetState("k", ""),
        Ping("t"),
        Ping(""),
        ConnectionClosed(),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"LOG x", "x"),
        (b"LOG     ~~~~^~~~", "    ~~~~^~~~"),  # a traceback's caret line, as printed
        (b"LOG\t\tindented by a tab", "\tindented by a tab"),
        (b"LOG  x \t ", " x"),  # trailing whitespace is trimmed
        (b"LOG    ", ""),
        (b"LOG", ""),
        (b" LOG  x", " x"),  # whitespace before the command is skipped
    ],
)
def test_a_log_message_is_everything_after_one_separator(line: bytes, message: str) -> None:
    for block in (line + b"\n", b"LOG a\n" + line + b"\n"):  # line by line, and in a block
        events = events_of(b"IAM x\n" + block)
        assert events[-2] == Log((message,)), block


def test_consecutive_log_lines_arrive_as_one_event() -> None:
    connection = ServerConnection()
    connection.receive_data(b"IAM a\nLOG 1\nLOG 2\nLOG 3\n")
    assert connection.next_event() == Identify("a")
    assert connection.next_event() == Log(("1", "2", "3"))
    assert connection.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "first_line",
    [b"LOG x\n", b"IAM\n", b"IAM a b\n", b"IAM " + b"a" * 129 + b"\n", b"IAM bad!\n", b"\n"],
)
def test_first_line_not_a_valid_iam_is_fatal(first_line: bytes) -> None:
    connection = ServerConnection()
    connection.receive_data(first_line + b"LOG after\n")
    for _ in range(2):  # the same error on every later call
        with pytest.raises(RemoteProtocolError) as raised:
            connection.next_event()
        assert raised.value.code is ErrorCode.BAD_IAM
    assert connection.state is ConnectionState.FAILED
    connection.receive_data(b"LOG dropped\n")  # ignored, not an error


def test_longest_valid_name_is_accepted() -> None:
    name = "A-z_0.9:@" + "x" * 119
    assert events_of(f"IAM {name}\n".encode())[0] == Identify(name)


def test_non_fatal_errors_keep_the_connection() -> None:
    events = events_of(b"IAM a\nFOO bar\nlog lower\nSET\nSET bad!key v\nIAM b\nLOG ok\n")
    assert events == [
        Identify("a"),
        Rejected(ErrorCode.UNKNOWN_COMMAND, "unknown command"),
        Rejected(ErrorCode.UNKNOWN_COMMAND, "unknown command"),
        Rejected(ErrorCode.BAD_SET, "expected SET <key> <value>"),
        Rejected(ErrorCode.BAD_SET, "expected SET <key> <value>"),
        Rejected(ErrorCode.UNKNOWN_COMMAND, "IAM may be sent once"),
        Log(("ok",)),
        ConnectionClosed(),
    ]


def test_line_over_the_limit_is_kept_cut_and_flagged() -> None:
    events = events_of(b"IAM a\nLOG " + b"x" * 100 + b"\nLOG next\n", max_line_bytes=10)
    assert events[1].code is ErrorCode.LINE_TOO_LONG  # type: ignore[union-attr]
    assert events[2:] == [Log(("xxxxxx",), truncated=True), Log(("next",)), ConnectionClosed()]


def test_one_mebibyte_line_without_newline_stays_bounded() -> None:
    connection = ServerConnection(max_line_bytes=1024)
    connection.receive_data(b"IAM a\nLOG ")
    for _ in range(256):
        connection.receive_data(b"z" * 4096)
    events: list[ServerEvent] = []
    assert drain(connection, events) is None
    assert events[-1] == Log(("z" * 1020,), truncated=True)
    connection.receive_data(b"\nLOG still open\n")
    assert connection.next_event() == Log(("still open",))


def test_invalid_utf8_is_kept_with_replacement_characters() -> None:
    events = events_of(b"IAM a\nLOG caf\xc3\xa9 \xff\xc3\n")
    assert events[1] == Log(("caf\u00e9 \ufffd\ufffd",))


def test_end_of_input_mid_line_applies_the_line() -> None:
    assert events_of(b"IAM a\nLOG unfinished") == [
        Identify("a"),
        Log(("unfinished",)),
        ConnectionClosed(),
    ]


def test_data_after_end_of_input_is_a_runtime_error() -> None:
    connection = ServerConnection()
    connection.receive_data(b"")
    assert connection.next_event() == ConnectionClosed()
    assert connection.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError):
        connection.receive_data(b"IAM a\n")


SAMPLE_LINES = {
    LineKind.IAM: "IAM someone",
    LineKind.BAD_IAM: "IAM bad name",
    LineKind.LOG: "LOG text",
    LineKind.SET: "SET key value",
    LineKind.BAD_SET: "SET",
    LineKind.PING: "PING 7",
    LineKind.BLANK: "  ",
    LineKind.UNKNOWN: "HELLO",
}


def test_transition_table_covers_every_live_state_and_line_kind() -> None:
    live = [ConnectionState.AWAIT_IAM, ConnectionState.IDENTIFIED]
    assert set(TRANSITIONS) == {(state, kind) for state in live for kind in LineKind}
    assert {classify(line)[0] for line in SAMPLE_LINES.values()} == set(LineKind)


@given(st.sampled_from(sorted(TRANSITIONS, key=str)))
def test_every_transition_does_what_the_table_says(
    pair: tuple[ConnectionState, LineKind],
) -> None:
    state, kind = pair
    expected_state, outcome = TRANSITIONS[pair]
    connection = ServerConnection()
    if state is ConnectionState.IDENTIFIED:
        connection.receive_data(b"IAM first\n")
        assert connection.next_event() == Identify("first")
    connection.receive_data(SAMPLE_LINES[kind].encode() + b"\n")
    events: list[ServerEvent] = []
    error = drain(connection, events)
    assert connection.state is expected_state
    if outcome is Outcome.FAIL:
        assert error == "bad-iam" and events == []
    elif outcome is Outcome.IGNORE:
        assert events == []
    elif outcome is Outcome.EMIT:
        assert events == [classify(SAMPLE_LINES[kind])[1]]
    else:
        code = ErrorCode.BAD_SET if outcome is Outcome.REJECT_SET else ErrorCode.UNKNOWN_COMMAND
        assert [type(e) for e in events] == [Rejected] and events[0].code is code  # type: ignore[union-attr]
