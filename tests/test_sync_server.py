"""The blocking-socket server over real sockets on 127.0.0.1 (ephemeral ports)."""

import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from logatron_core import (
    MAX_LINE_BYTES,
    MAX_PENDING_REPLY_BYTES,
    ClientClosed,
    Registry,
    RegistryEvent,
)
from logatron_sync import LogatronClient, LogatronServer

TIMEOUT = 5.0


@pytest.fixture
def server() -> Iterator[LogatronServer]:
    with LogatronServer(port=0) as running:
        yield running


@contextmanager
def serving(**kwargs: Any) -> Iterator[LogatronServer]:
    registry = Registry(**kwargs)
    with LogatronServer(port=0, registry=registry) as running:
        yield running


class Peer:
    """A raw TCP peer: bytes out, reply lines in."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next reply line (without its newline); b"" at end of input."""
        while b"\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def at_eof(self) -> bool:
        return self.line() == b""

    def close(self) -> None:
        self.sock.close()


@contextmanager
def peer(server: LogatronServer) -> Iterator[Peer]:
    connection = Peer(server.address)
    try:
        yield connection
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def messages(server: LogatronServer, name: str) -> list[str]:
    return [entry.message for entry in server.registry.log(name)]


# -- the protocol over the wire ----------------------------------------------------------------


def test_round_trip(server: LogatronServer) -> None:
    with peer(server) as p:
        p.send(b"IAM bob\nLOG hello world\nSET mood very good\nPING t1\n")
        assert p.line() == b"PONG t1"
        assert messages(server, "bob") == ["hello world"]
        assert server.registry.state("bob") == {"mood": "very good"}
        assert server.registry.client("bob").connected
    wait_until(lambda: not server.registry.client("bob").connected)


def test_port_and_address() -> None:
    with LogatronServer(port=0) as running:
        host, port = running.address
        assert host == "127.0.0.1" and port == running.port > 0


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        running = LogatronServer("::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    with running, LogatronClient("six", "::1", running.port, timeout=TIMEOUT) as client:
        client.log("over v6")
        client.ping()
        assert messages(running, "six") == ["over v6"]
        assert running.address[0] == "::1"


# (registry limits, max_line_bytes, lines, the ERR code, whether the connection closes)
ERROR_CASES = [
    ({}, MAX_LINE_BYTES, b"LOG before iam\n", b"bad-iam", True),
    ({}, MAX_LINE_BYTES, b"IAM bad!name\n", b"bad-iam", True),
    ({}, MAX_LINE_BYTES, b"IAM taken\n", b"name-taken", True),
    ({"max_clients": 1}, MAX_LINE_BYTES, b"IAM second\n", b"too-many-clients", True),
    ({}, MAX_LINE_BYTES, b"IAM c\nFROB x\n", b"unknown-command", False),
    ({}, MAX_LINE_BYTES, b"IAM c\nSET\n", b"bad-set", False),
    ({"max_state_keys": 1}, MAX_LINE_BYTES, b"IAM c\nSET a 1\nSET b 2\n", b"too-many-keys", False),
    ({}, 16, b"IAM c\nLOG " + b"x" * 40 + b"\n", b"line-too-long", False),
]


@pytest.mark.parametrize(("limits", "max_line_bytes", "lines", "code", "fatal"), ERROR_CASES)
def test_error_codes_over_the_wire(
    limits: dict[str, int], max_line_bytes: int, lines: bytes, code: bytes, fatal: bool
) -> None:
    registry = Registry(**limits)  # type: ignore[arg-type]
    with (
        LogatronServer(port=0, registry=registry, max_line_bytes=max_line_bytes) as running,
        peer(running) as first,
        peer(running) as p,
    ):
        first.send(b"IAM taken\nPING 0\n")
        assert first.line() == b"PONG 0"
        p.send(lines + b"PING 1\n")
        reply = p.line()
        assert reply.startswith(b"ERR " + code + b" "), reply
        if fatal:
            assert p.at_eof()
        else:
            assert p.line() == b"PONG 1"
            p.send(b"LOG still here\nPING 2\n")
            assert p.line() == b"PONG 2"
            assert messages(running, "c")[-1] == "still here"
        assert registry.stats.errors == {code.decode(): 1}


def test_truncated_line_is_kept_cut(server: LogatronServer) -> None:
    with peer(server) as p:
        p.send(b"IAM big\nLOG " + b"y" * (MAX_LINE_BYTES + 10) + b"\nPING 1\n")
        assert p.line().startswith(b"ERR line-too-long ")
        assert p.line() == b"PONG 1"
    (entry,) = server.registry.log("big")
    assert entry.truncated and len(entry.message) == MAX_LINE_BYTES - 4


def test_one_mebibyte_line_without_newline(server: LogatronServer) -> None:
    chunk = b"z" * 65536
    with peer(server) as p:
        p.send(b"IAM huge\nLOG ")
        for _ in range(16):  # 1 MiB and no newline: the connection stays open
            p.send(chunk)
        p.send(b"\nLOG after\nPING 1\n")
        assert p.line().startswith(b"ERR line-too-long ")
        assert p.line() == b"PONG 1"
        first, after = server.registry.log("huge")
        assert first.truncated and len(first.message) == MAX_LINE_BYTES - 4
        assert (after.message, after.truncated) == ("after", False)
        assert server.registry.client("huge").connected
        assert server.registry.stats.bytes_received > 1024 * 1024


def test_invalid_utf8_is_kept_with_replacement(server: LogatronServer) -> None:
    with peer(server) as p:
        p.send(b"IAM u\nLOG caf\xc3 \xff bar\nSET k \xfe\nPING 1\n")
        assert p.line() == b"PONG 1"
    assert messages(server, "u") == ["caf\ufffd \ufffd bar"]
    assert server.registry.state("u") == {"k": "\ufffd"}


def test_reset_mid_line_applies_the_partial_line(server: LogatronServer) -> None:
    sock = socket.create_connection(server.address, timeout=TIMEOUT)
    try:
        sock.sendall(b"IAM resetter\nLOG complete\nLOG partial li")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        sock.close()  # SO_LINGER 0: the close sends a reset
    wait_until(lambda: "resetter" in server.registry.names())
    wait_until(lambda: not server.registry.client("resetter").connected)
    assert messages(server, "resetter") == ["complete", "partial li"]
    wait_until(lambda: server.connection_count == 0)


def test_eof_mid_line_applies_the_partial_line(server: LogatronServer) -> None:
    with peer(server) as p:
        p.send(b"IAM halfway\nLOG last words")
        p.sock.shutdown(socket.SHUT_WR)
        assert p.at_eof()
    assert messages(server, "halfway") == ["last words"]
    assert not server.registry.client("halfway").connected


def test_ping_is_a_barrier() -> None:
    registry = Registry(buffer_size=20_000)
    with LogatronServer(port=0, registry=registry) as running, peer(running) as p:
        p.send(b"IAM barrier\n")
        payload = b"".join(b"LOG line %d\n" % i for i in range(20_000))
        for start in range(0, len(payload), 1000):  # uneven pieces, cut mid-line
            p.send(payload[start : start + 1000])
        p.send(b"PING done\n")
        assert p.line() == b"PONG done"
        log = registry.log("barrier")
        assert len(log) == 20_000
        assert log[-1].message == "line 19999"
        assert [entry.seq for entry in log] == list(range(1, 20_001))


# -- robustness --------------------------------------------------------------------------------


def test_a_peer_that_never_reads_slows_no_one(server: LogatronServer) -> None:
    flood = socket.create_connection(server.address, timeout=TIMEOUT)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()

    def flooder() -> None:
        # Unknown commands and PINGs with long tokens: the core caps ERR lines per chunk,
        # but answers every PING, so the replies this peer never reads pile up.
        burst = (b"NOPE\n" * 50 + b"PING " + b"t" * 1000 + b"\n") * 400
        flood.sendall(b"IAM flooder\n")
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                flood.sendall(burst)
            except OSError:
                return

    thread = threading.Thread(target=flooder, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.registry.stats.replies_dropped > 0)
        with LogatronClient("patient", port=server.port, timeout=TIMEOUT) as client:
            for _ in range(20):
                started = time.monotonic()
                client.ping()
                assert time.monotonic() - started < 1.0
        assert server.registry.stats.replies_dropped > 0
        for connection in list(server._connections.values()):
            assert len(connection.out) <= MAX_PENDING_REPLY_BYTES
    finally:
        stop.set()
        thread.join(TIMEOUT)
        flood.close()
    assert server.registry.stats.errors["unknown-command"] > 0


def test_one_failing_connection_does_not_kill_the_loop() -> None:
    failures = [RuntimeError("clock broke")]

    def clock() -> float:
        if failures and threading.current_thread().name.startswith("logatron-sync"):
            if armed.is_set():
                raise failures.pop()
        return time.time()

    armed = threading.Event()
    with LogatronServer(port=0, clock=clock) as running:
        with LogatronClient("steady", port=running.port, timeout=TIMEOUT) as steady:
            with peer(running) as doomed:
                armed.set()
                doomed.send(b"IAM doomed\n")
                assert doomed.at_eof()  # that connection was closed
            steady.log("still fine")
            steady.ping()
            assert messages(running, "steady") == ["still fine"]


def test_a_thousand_concurrent_clients() -> None:
    count = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * count + 100  # both ends live in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"ulimit -n is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    with serving() as running:
        peers: list[Peer] = []
        try:
            for i in range(count):
                peers.append(Peer(running.address))
                peers[-1].send(b"IAM c%d\nLOG hello from %d\nPING %d\n" % (i, i, i))
            for i, p in enumerate(peers):
                assert p.line() == b"PONG %d" % i
            assert running.registry.stats.connected == count
            assert running.connection_count == count
        finally:
            for p in peers:
                p.close()
        wait_until(lambda: running.registry.stats.connected == 0)
        assert messages(running, "c999") == ["hello from 999"]


# -- clients come back -------------------------------------------------------------------------


def test_retention_and_reconnect_resume() -> None:
    with serving(retention_seconds=3600) as running:
        with LogatronClient("phoenix", port=running.port, timeout=TIMEOUT) as client:
            client.log("first life")
            client.set("lives", "1")
            client.ping()
        wait_until(lambda: not running.registry.client("phoenix").connected)
        record = running.registry.client("phoenix")
        assert record.disconnected_at is not None
        assert [entry.message for entry in record.log] == ["first life"]
        with LogatronClient("phoenix", port=running.port, timeout=TIMEOUT) as client:
            client.log("second life")
            client.ping()
            record = running.registry.client("phoenix")
            assert record.connected and record.disconnected_at is None
            assert [entry.message for entry in record.log] == ["first life", "second life"]
            assert record.state == {"lives": "1"}


def test_retention_zero_forgets_the_client() -> None:
    with serving(retention_seconds=0) as running:
        with LogatronClient("mayfly", port=running.port, timeout=TIMEOUT) as client:
            client.log("brief")
            client.ping()
        wait_until(lambda: running.registry.names() == [])


def test_the_loop_expires_retained_clients_at_the_registrys_deadline() -> None:
    registry = Registry(retention_seconds=0.3)
    with LogatronServer(port=0, registry=registry) as running:
        with LogatronClient("old", port=running.port, timeout=TIMEOUT) as client:
            client.ping()
        wait_until(lambda: running.call(lambda r: not r.client("old").connected))
        deadline = running.call(lambda r: r.next_deadline())
        assert deadline is not None
        # No connection event follows: only the loop's deadline can expire it.
        wait_until(lambda: running.call(lambda r: r.names()) == [], timeout=5)
        assert time.time() >= deadline


# -- starting and stopping ---------------------------------------------------------------------


def test_stop_delivers_close_events_and_is_idempotent() -> None:
    events: list[RegistryEvent] = []
    running = LogatronServer(port=0)
    running.registry.subscribe(events.append)
    running.start()
    try:
        with peer(running) as a, peer(running) as b:
            a.send(b"IAM a\nPING 1\n")
            b.send(b"IAM b\nLOG unfinished")
            assert a.line() == b"PONG 1"
            wait_until(lambda: running.registry.stats.connected == 2)
            running.stop()
            assert a.at_eof() and b.at_eof()
    finally:
        running.stop()
    running.stop()
    closed = {event.name for event in events if isinstance(event, ClientClosed)}
    assert closed == {"a", "b"}
    assert messages(running, "b") == ["unfinished"]
    assert running.connection_count == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(running.address, timeout=TIMEOUT).close()
    with pytest.raises(RuntimeError):
        running.start()


def test_serve_forever_in_the_foreground() -> None:
    running = LogatronServer(port=0)
    thread = threading.Thread(target=running.serve_forever)
    thread.start()
    try:
        with LogatronClient("fg", port=running.port, timeout=TIMEOUT) as client:
            client.ping()
        with pytest.raises(RuntimeError):
            running.serve_forever()  # already serving
    finally:
        running.stop()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_call_reads_the_registry_safely_while_peers_send(server: LogatronServer) -> None:
    stop = threading.Event()

    def chatter() -> None:
        with LogatronClient("busy", port=server.port, timeout=TIMEOUT) as client:
            while not stop.is_set():
                client.log_many(["chatter"] * 100)
            client.ping()

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.call(lambda registry: "busy" in registry.names()))
        for _ in range(20):
            log = server.call(lambda registry: registry.log("busy"))
            assert all(entry.message == "chatter" for entry in log)
        with pytest.raises(KeyError):
            server.call(lambda registry: registry.client("nobody"))
    finally:
        stop.set()
        thread.join(TIMEOUT)
    server.stop()
    assert server.call(lambda registry: registry.stats.connected) == 0  # runs in this thread


def test_stop_before_serving_closes_the_listener() -> None:
    running = LogatronServer(port=0)
    running.stop()
    running.stop()
    with pytest.raises(RuntimeError):
        running.serve_forever()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_python_dash_m_runs_until_a_signal(signum: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-bb", "-m", "logatron_sync", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        with LogatronClient("sub", port=int(match[1]), timeout=TIMEOUT) as client:
            client.log("from the test")
            client.ping()
            process.send_signal(signum)
            assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _out, err = process.communicate(timeout=TIMEOUT)
    assert err == ""


def test_python_dash_m_refuses_a_bad_address() -> None:
    with LogatronServer(port=0) as running:
        result = subprocess.run(
            [sys.executable, "-m", "logatron_sync", "--port", str(running.port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
    assert result.returncode == 1
    assert result.stderr.startswith("logatron_sync: ")
