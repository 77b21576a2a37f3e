"""A Session drives one connection against the registry: every ERR code, replies, close."""

from hypothesis import given
from hypothesis import strategies as st

from logatron_core import (
    MAX_ERROR_REPLIES_PER_RECEIVE,
    ErrorCode,
    ErrorReply,
    Identified,
    Registry,
    Session,
)


def session(
    registry: Registry | None = None, *, max_clients: int = 10, max_state_keys: int = 10
) -> tuple[Session, Registry]:
    registry = registry or Registry(max_clients=max_clients, max_state_keys=max_state_keys)
    return Session(registry), registry


def exchange(s: Session, data: bytes, now: float) -> bytes:
    """Feed ``data`` and take the replies it caused."""
    s.receive_data(data, now)
    return s.data_to_send()


def test_lines_reach_the_registry_and_ping_is_a_barrier() -> None:
    s, registry = session()
    reply = exchange(s, b"IAM bob\nLOG one\nSET mood ok\nLOG two\nPING 42\n", 10.0)
    assert reply == b"PONG 42\n"
    assert [e.message for e in registry.log("bob")] == ["one", "two"]
    assert registry.state("bob") == {"mood": "ok"}


def test_bad_iam_answers_and_closes() -> None:
    s, registry = session()
    assert exchange(s, b"LOG first\n", 1.0).startswith(b"ERR bad-iam ")
    assert s.closed and registry.names() == []
    assert registry.stats.errors == {"bad-iam": 1}
    assert exchange(s, b"IAM late\n", 2.0) == b""


def test_name_taken_answers_and_closes() -> None:
    first, registry = session()
    exchange(first, b"IAM bob\n", 1.0)
    second = Session(registry)
    assert exchange(second, b"IAM bob\nLOG mine\n", 2.0).startswith(b"ERR name-taken ")
    assert second.closed and not first.closed
    assert registry.log("bob") == [] and registry.client("bob").connected


def test_too_many_clients_answers_and_closes() -> None:
    first, registry = session(max_clients=1)
    exchange(first, b"IAM a\n", 1.0)
    second = Session(registry)
    assert exchange(second, b"IAM b\n", 1.0).startswith(b"ERR too-many-clients ")
    assert second.closed and registry.names() == ["a"]


def test_non_fatal_errors_answer_and_keep_the_connection() -> None:
    s, registry = session(max_state_keys=1)
    reply = exchange(s, b"IAM a\nNOPE\nSET\nSET k 1\nSET j 2\nSET k 3\nPING\n", 1.0)
    assert reply.splitlines() == [
        b"ERR unknown-command unknown command",
        b"ERR bad-set expected SET <key> <value>",
        b"ERR too-many-keys a holds its limit of 1 keys",
        b"PONG",
    ]
    assert not s.closed
    assert registry.state("a") == {"k": "3"}
    assert registry.client("a").errors == 3


def test_line_too_long_is_kept_truncated_and_answered() -> None:
    registry = Registry()
    s = Session(registry, max_line_bytes=8)
    reply = exchange(s, b"IAM a\nLOG 0123456789\nLOG ok\n", 1.0)
    assert reply.startswith(b"ERR line-too-long ")
    entries = registry.log("a")
    assert [(e.message, e.truncated) for e in entries] == [("0123", True), ("ok", False)]
    assert registry.stats.lines_truncated == 1


def test_end_of_input_applies_the_last_line_and_disconnects() -> None:
    s, registry = session()
    exchange(s, b"IAM a\nLOG half", 1.0)
    assert registry.log("a") == []
    assert exchange(s, b"", 2.0) == b""
    assert s.closed
    client = registry.client("a")
    assert [e.message for e in client.log] == ["half"]
    assert not client.connected and client.disconnected_at == 2.0


def test_bytes_received_are_counted() -> None:
    s, registry = session()
    exchange(s, b"IAM a\nLOG x\n", 1.0)
    assert registry.stats.bytes_received == 12


def test_a_flood_of_bad_lines_gets_a_bounded_reply_but_every_error_counted() -> None:
    s, registry = session()
    flood = MAX_ERROR_REPLIES_PER_RECEIVE + 50
    reply = exchange(s, b"IAM a\n" + b"FOO\n" * flood + b"PING end\n", 1.0)
    lines = reply.splitlines()
    assert len(lines) == MAX_ERROR_REPLIES_PER_RECEIVE + 1 and lines[-1] == b"PONG end"
    assert registry.stats.errors == {"unknown-command": flood}
    assert registry.client("a").errors == flood
    assert exchange(s, b"FOO\n", 2.0).startswith(b"ERR unknown-command")  # a new chunk


def test_ping_token_with_a_lone_carriage_return_is_answered() -> None:
    s, _ = session()
    assert exchange(s, b"IAM a\nPING a\rb\nPING ok\n", 1.0) == b"PONG ab\nPONG ok\n"


@given(st.binary(max_size=200))
def test_a_session_answers_any_bytes_without_raising(data: bytes) -> None:
    s, _ = session()
    exchange(s, b"IAM a\n" + data, 1.0)
    exchange(s, b"", 2.0)
    assert s.closed


def test_receive_data_reports_the_iam_and_each_error_answered() -> None:
    s, _ = session()
    events = s.receive_data(b"IAM bob\nNOPE\nLOG fine\n", 1.0)
    assert events == [Identified("bob"), ErrorReply(ErrorCode.UNKNOWN_COMMAND, "unknown command")]
    assert s.name == "bob"
    assert s.receive_data(b"LOG quiet\n", 2.0) == ()


def test_replies_past_the_bound_are_dropped_whole_and_counted() -> None:
    registry = Registry()
    s = Session(registry, max_pending_reply_bytes=14)
    s.receive_data(b"IAM a\nPING 1\nPING 2\nPING 3\n", 1.0)
    assert s.data_to_send() == b"PONG 1\nPONG 2\n"  # a third would pass 14 bytes
    assert registry.stats.replies_dropped == 1
    assert exchange(s, b"PING 4\n", 2.0) == b"PONG 4\n"  # room again once taken


def test_open_connections_are_counted_until_closed() -> None:
    registry = Registry()
    first, second = Session(registry), Session(registry)
    assert registry.stats.connections_open == 2
    first.receive_data(b"", 1.0)
    second.receive_data(b"LOG no iam\n", 1.0)  # bad-iam closes it
    assert registry.stats.connections_open == 0


def test_a_held_pong_waits_for_the_registry_to_confirm_every_earlier_change() -> None:
    registry = Registry()
    registry.hold_pongs()
    s = Session(registry)
    woken: list[bool] = []
    s.on_replies = lambda: woken.append(True)
    assert exchange(s, b"IAM a\nLOG one\nPING 1\nLOG two\nPING 2\n", 1.0) == b""
    assert registry.pongs_waiting and not registry.confirmed
    first_mark = 2  # IAM, then the run before PING 1
    registry.confirm(first_mark)
    assert s.data_to_send() == b"PONG 1\n" and woken == [True]
    registry.confirm(registry.mark)
    assert s.data_to_send() == b"PONG 2\n"
    assert not registry.pongs_waiting and registry.confirmed
    assert exchange(s, b"PING 3\n", 2.0) == b"PONG 3\n"  # nothing new to confirm


def test_a_pong_held_when_the_peer_half_closes_is_still_answered() -> None:
    registry = Registry()
    registry.hold_pongs()
    s = Session(registry)
    s.receive_data(b"IAM a\nLOG x\nPING", 1.0)
    s.receive_data(b"", 2.0)  # the last line is applied at end of input
    assert s.closed and s.pongs_held
    registry.confirm(registry.mark)
    assert s.data_to_send() == b"PONG\n" and not s.pongs_held
    assert not registry.pongs_waiting
