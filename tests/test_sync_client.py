"""The blocking client against the real server and against scripted fake servers."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from logatron_core import (
    ErrorCode,
    LocalProtocolError,
    LogatronError,
    Registry,
    RemoteProtocolError,
)
from logatron_sync import LogatronClient, LogatronServer, ServerRefused
from served import served

TIMEOUT = 5.0


@pytest.fixture
def server() -> Iterator[LogatronServer]:
    with LogatronServer(port=0) as running:
        yield running


@contextmanager
def fake_server(script: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection server on an ephemeral port that runs ``script`` on its connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(TIMEOUT)
            try:
                script(connection)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(TIMEOUT)


def read_lines(connection: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n")[:count]


def read_until_eof(connection: socket.socket) -> None:
    """Wait for the client to close (bounded by the connection's timeout)."""
    while connection.recv(4096):
        pass


def test_log_set_ping(server: LogatronServer) -> None:
    with LogatronClient("alice", port=server.port, timeout=TIMEOUT) as client:
        client.log("one line")
        client.log("two\nlines")
        client.log_many(["a", "b\r\nc"])
        client.set("mode", "fast and loose")
        client.ping()
        assert client.errors == []
        log = server.registry.log("alice")
        assert [entry.message for entry in log] == ["one line", "two", "lines", "a", "b", "c"]
        assert server.registry.state("alice") == {"mode": "fast and loose"}
    assert client.closed
    client.close()  # idempotent


def test_taken_name_raises_server_refused(server: LogatronServer) -> None:
    with LogatronClient("taken", port=server.port, timeout=TIMEOUT):
        with pytest.raises(ServerRefused) as caught:
            LogatronClient("taken", port=server.port, timeout=TIMEOUT)
    assert caught.value.code is ErrorCode.NAME_TAKEN
    assert isinstance(caught.value, LogatronError)
    assert "name-taken" in str(caught.value)


def test_too_many_clients_raises_server_refused() -> None:
    with (
        LogatronServer(port=0, registry=Registry(max_clients=1)) as running,
        LogatronClient("only", port=running.port, timeout=TIMEOUT),
    ):
        with pytest.raises(ServerRefused) as caught:
            LogatronClient("another", port=running.port, timeout=TIMEOUT)
    assert caught.value.code is ErrorCode.TOO_MANY_CLIENTS


def test_invalid_name_is_refused_before_connecting() -> None:
    with pytest.raises(LocalProtocolError):
        LogatronClient("no spaces", port=1)


def test_non_fatal_errors_are_collected() -> None:
    registry = Registry(max_state_keys=1)
    with (
        LogatronServer(port=0, registry=registry, max_line_bytes=32) as running,
        LogatronClient("errs", port=running.port, timeout=TIMEOUT) as client,
    ):
        client.set("a", "1")
        client.set("b", "2")
        client.log("x" * 100)
        client.ping()
        assert [error.code for error in client.errors] == [
            ErrorCode.TOO_MANY_KEYS,
            ErrorCode.LINE_TOO_LONG,
        ]
        assert registry.state("errs") == {"a": "1"}
        client.log("still connected")
        client.ping()


def test_invalid_key_sends_nothing(server: LogatronServer) -> None:
    with LogatronClient("keys", port=server.port, timeout=TIMEOUT) as client:
        with pytest.raises(LocalProtocolError):
            client.set("bad key", "v")
        with pytest.raises(LocalProtocolError):
            client.set("k", "two\nlines")
        client.ping()
        assert client.errors == []
        assert server.registry.state("keys") == {}


def test_ping_timeout() -> None:
    def answer_first_ping_only(connection: socket.socket) -> None:
        iam, blank, ping = read_lines(connection, 3)
        assert (iam, blank) == (b"IAM slow", b"")  # the blank line is for HTTP servers
        connection.sendall(b"PONG " + ping.removeprefix(b"PING ") + b"\n")
        read_lines(connection, 2)  # the next pings, never answered
        connection.sendall(b"PONG not-yours\n")
        read_until_eof(connection)

    with (
        fake_server(answer_first_ping_only) as port,
        LogatronClient("slow", port=port, timeout=TIMEOUT) as client,
    ):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.ping(timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2.0
        with pytest.raises(TimeoutError):
            client.ping(timeout=0.2)  # a PONG for another token does not count


def test_connect_times_out_when_the_server_never_answers() -> None:
    def silent(connection: socket.socket) -> None:
        read_lines(connection, 3)
        read_until_eof(connection)

    with fake_server(silent) as port:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            LogatronClient("mute", port=port, timeout=0.3)
        assert time.monotonic() - started < 2.0


def test_a_client_pointed_at_the_http_port_is_told_at_once() -> None:
    with served() as server:
        started = time.monotonic()
        with pytest.raises(RemoteProtocolError, match=r"'HTTP/1\.1 400 Bad Request'"):
            LogatronClient("bob", port=server.http_port, timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2  # not after the timeout


def test_connection_refused() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        LogatronClient("nobody-home", port=port, timeout=TIMEOUT)


def test_server_closing_is_a_connection_error(server: LogatronServer) -> None:
    client = LogatronClient("dropped", port=server.port, timeout=TIMEOUT)
    try:
        server.stop()
        with pytest.raises(ConnectionError):
            client.ping()
    finally:
        client.close()
    with pytest.raises(RuntimeError):
        client.log("after close")


def test_fatal_error_noticed_by_a_later_call() -> None:
    def refuse_later(connection: socket.socket) -> None:
        _iam, _blank, ping = read_lines(connection, 3)
        connection.sendall(b"PONG " + ping.removeprefix(b"PING ") + b"\n")
        connection.sendall(b"ERR too-many-clients go away\n")
        connection.shutdown(socket.SHUT_WR)
        read_until_eof(connection)

    with (
        fake_server(refuse_later) as port,
        LogatronClient("late", port=port, timeout=TIMEOUT) as client,
    ):
        with pytest.raises(ServerRefused) as caught:
            client.ping()
        assert caught.value.code is ErrorCode.TOO_MANY_CLIENTS
        with pytest.raises(ServerRefused):
            client.log("refused already")
