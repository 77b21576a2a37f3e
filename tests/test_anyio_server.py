"""The anyio server on both backends: addresses, events, Lagged, shutdown, reply bounds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from logatron_anyio import Lagged, LogatronServer
from logatron_core import ClientClosed, ClientReady, Logged, Registry, RegistryEvent, StateSet

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[LogatronServer]:
    """A server on an ephemeral port of 127.0.0.1 (unless given), cancelled on exit."""
    options.setdefault("port", 0)
    server = LogatronServer(**options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server
        tg.cancel_scope.cancel()


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (polling, bounded by ``seconds``) until ``predicate()`` is true."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the condition did not come true in time")


async def exchange(stream: anyio.abc.SocketStream, data: bytes, until: bytes) -> bytes:
    """Send ``data``, then read until the replies end with ``until``."""
    await stream.send(data)
    got = b""
    with anyio.fail_after(5):
        while not got.endswith(until):
            got += await stream.receive()
    return got


async def test_port_zero_reports_the_real_address() -> None:
    async with serving() as server:
        assert server.port != 0
        assert server.address == ("127.0.0.1", server.port)
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            assert await exchange(stream, b"IAM bob\nPING x\n", b"\n") == b"PONG x\n"


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not available")
    async with serving(host="::1") as server:
        assert server.address == ("::1", server.port)
        async with await anyio.connect_tcp("::1", server.port) as stream:
            assert await exchange(stream, b"IAM six\nLOG v6\nPING\n", b"\n") == b"PONG\n"
        assert [entry.message for entry in server.registry.log("six")] == ["v6"]


async def test_serve_raises_when_the_port_is_taken() -> None:
    async with serving() as server:
        with pytest.raises(OSError):
            await LogatronServer(port=server.port).serve()


async def test_events_arrive_in_order() -> None:
    async with serving() as server, server.events() as events:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await exchange(stream, b"IAM bob\nLOG one\nLOG two\nSET k v\nPING\n", b"PONG\n")
        received: list[RegistryEvent | Lagged] = []
        with anyio.fail_after(5):
            async for event in events:
                received.append(event)
                if isinstance(event, ClientClosed):
                    break
    assert [type(event) for event in received] == [ClientReady, Logged, StateSet, ClientClosed]
    logged = received[1]
    assert isinstance(logged, Logged) and logged.messages == ("one", "two")
    assert isinstance(received[2], StateSet)
    assert (received[2].name, received[2].key, received[2].value) == ("bob", "k", "v")


async def test_a_slow_consumer_gets_lagged_and_ingest_never_waits() -> None:
    async with serving() as server, server.events(max_queue=5) as events:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            # 1 ClientReady + 50 StateSet, nobody consuming: PONG proves ingest did not wait.
            lines = b"".join(b"SET k%d v\n" % index for index in range(50))
            await exchange(stream, b"IAM bob\n" + lines + b"PING\n", b"PONG\n")
            assert server.registry.state("bob")["k49"] == "v"
            with anyio.fail_after(5):
                first = [await anext(events) for _ in range(5)]
                await exchange(stream, b"SET after v\nPING\n", b"PONG\n")
                lagged = await anext(events)
                after = await anext(events)
    assert isinstance(first[0], ClientReady)
    assert [event.key for event in first if isinstance(event, StateSet)] == ["k0", "k1", "k2", "k3"]
    assert lagged == Lagged(46)  # k4 .. k49, said in order, before what came next
    assert isinstance(after, StateSet) and after.key == "after"


async def test_events_end_when_closed() -> None:
    async with serving() as server:
        events = server.events()
        assert server.registry.stats.subscribers == 1
        await events.aclose()
        assert server.registry.stats.subscribers == 0
        assert [event async for event in events] == []
        with pytest.raises(ValueError):
            server.events(max_queue=0)


async def test_cancelling_serve_closes_every_connection_with_its_close_event() -> None:
    registry = Registry()
    closed: list[str] = []
    registry.subscribe(
        lambda event: closed.append(event.name) if isinstance(event, ClientClosed) else None
    )
    streams = []
    async with anyio.create_task_group() as tg:
        server = LogatronServer(port=0, registry=registry)
        await tg.start(server.serve)
        for name in ("a", "b", "c"):
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            streams.append(stream)
            await exchange(stream, f"IAM {name}\nLOG hi\nPING\n".encode(), b"PONG\n")
        assert registry.stats.connected == 3
        tg.cancel_scope.cancel()
    assert sorted(closed) == ["a", "b", "c"]
    assert registry.stats.connected == 0
    for stream in streams:
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    await stream.receive()
        await stream.aclose()


async def test_partial_line_is_applied_when_the_peer_closes() -> None:
    async with serving() as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await exchange(stream, b"IAM bob\nPING\n", b"PONG\n")
            await stream.send(b"LOG last words")
        await eventually(lambda: not server.registry.client("bob").connected)
        assert [entry.message for entry in server.registry.log("bob")] == ["last words"]


async def test_replies_to_a_peer_that_never_reads_are_dropped_and_counted() -> None:
    async with serving() as server:
        async with (
            await anyio.connect_tcp("127.0.0.1", server.port) as flooder,
            await anyio.connect_tcp("127.0.0.1", server.port) as other,
        ):
            raw = flooder.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await exchange(other, b"IAM other\nPING\n", b"PONG\n")
            await flooder.send(b"IAM flooder\n")
            # Unknown commands and PINGs with long tokens: the core caps ERR lines per chunk,
            # but answers every PING, so the replies this peer never reads pile up.
            flood = (b"FOO\n" * 50 + b"PING " + b"t" * 1000 + b"\n") * 300
            with anyio.fail_after(20):
                while server.registry.stats.replies_dropped == 0:
                    await flooder.send(flood)
                    # The other client is served meanwhile.
                    with anyio.fail_after(2):
                        await exchange(other, b"PING\n", b"PONG\n")
            await flooder.send(b"LOG done\n")
            await eventually(
                lambda: [entry.message for entry in server.registry.log("flooder")] == ["done"],
                seconds=10,
            )
    assert server.registry.stats.replies_dropped > 0


async def test_retained_clients_expire_at_the_registrys_deadline() -> None:
    registry = Registry(retention_seconds=0.3)
    async with serving(registry=registry) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await exchange(stream, b"IAM bob\nPING\n", b"PONG\n")
        await eventually(lambda: not registry.client("bob").connected)
        deadline = registry.next_deadline()
        assert deadline is not None
        await eventually(lambda: registry.names() == [], seconds=5)
        assert time.time() >= deadline  # not before it


async def test_max_line_bytes_is_passed_to_every_session() -> None:
    async with serving(max_line_bytes=16) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            got = await exchange(stream, b"IAM bob\nLOG 0123456789abcdef\nPING\n", b"PONG\n")
        assert got.startswith(b"ERR line-too-long ")
        entry = server.registry.log("bob")[0]
        assert entry.truncated and entry.message == "0123456789ab"
    with pytest.raises(ValueError):
        LogatronServer(max_line_bytes=0)


def tcp_timer(local_port: int, remote_port: int) -> str:
    """The ``tr`` (timer) field of a 127.0.0.1 socket in /proc/net/tcp: 02 = keep-alive timer."""
    wanted = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == wanted:
                return fields[5].split(":")[0]
    raise AssertionError(f"no socket {wanted} in /proc/net/tcp")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
async def test_accepted_sockets_use_tcp_keepalive() -> None:
    async with serving() as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await exchange(stream, b"IAM bob\nPING\n", b"PONG\n")
            client_port = stream.extra(anyio.abc.SocketAttribute.local_port)
            # The server's side, once no delayed ACK holds its timer.
            await eventually(lambda: tcp_timer(server.port, client_port) == "02")
            assert tcp_timer(client_port, server.port) == "00"  # the client's: no keep-alive


async def test_events_of_one_client_are_bounded_in_lines() -> None:
    async with serving() as server, server.events(max_queue=10, client="b") as events:
        async with (
            await anyio.connect_tcp("127.0.0.1", server.port) as a,
            await anyio.connect_tcp("127.0.0.1", server.port) as b,
        ):
            await exchange(a, b"IAM a\nLOG not for this stream\nPING\n", b"PONG\n")
            run = b"".join(b"LOG %d\n" % index for index in range(30))
            await exchange(b, b"IAM b\n" + run + b"PING\n", b"PONG\n")  # 30 lines: one event
            await exchange(b, b"LOG kept 1\nLOG kept 2\nPING\n", b"PONG\n")
            with anyio.fail_after(5):
                ready, lagged, logged = [await anext(events) for _ in range(3)]
    assert isinstance(ready, ClientReady) and ready.name == "b"
    assert lagged == Lagged(30)  # the run of 30 outweighs the bound of 10: dropped, said so
    assert isinstance(logged, Logged) and logged.messages == ("kept 1", "kept 2")


async def test_a_pong_held_for_confirmation_is_written_once_confirmed() -> None:
    registry = Registry()
    registry.hold_pongs()  # as a durable store does: PONG once the lines are stored for good
    async with serving(registry=registry) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(b"IAM bob\n")
            for token in (b"one", b"two"):
                await stream.send(b"LOG x\nPING " + token + b"\n")
                await eventually(lambda: registry.pongs_waiting)
                registry.confirm(registry.mark)  # a writer task starts for the PONG
                with anyio.fail_after(5):
                    assert await stream.receive() == b"PONG " + token + b"\n"
