"""The async client on both backends, against the anyio server and against fake servers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from logatron_anyio import ConnectionLost, LogatronServer, ServerRefused, connect
from logatron_core import ErrorCode, LocalProtocolError, LogatronError, Registry

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[LogatronServer]:
    server = LogatronServer(port=0, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server
        tg.cancel_scope.cancel()


@asynccontextmanager
async def fake_server(
    handler: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """A listener on an ephemeral port that runs ``handler`` for each connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await handler(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield int(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.cancel_scope.cancel()


async def test_log_set_and_ping_arrive() -> None:
    async with serving() as server:
        async with await connect("bob", port=server.port) as client:
            await client.log("hello")
            await client.log("a traceback\n  line two", "another")
            await client.set("mood", "fine, thanks")
            await client.ping(timeout=5)
            assert client.errors == []
            assert server.registry.client("bob").connected
        log = [entry.message for entry in server.registry.log("bob")]
        # Each line of a message is its own entry, its indentation kept.
        assert log == ["hello", "a traceback", "  line two", "another"]
        assert server.registry.state("bob") == {"mood": "fine, thanks"}


async def test_concurrent_pings_each_get_their_pong() -> None:
    async with serving() as server, await connect("bob", port=server.port) as client:
        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(client.log, f"line {index}")
                tg.start_soon(client.ping)
        assert len(server.registry.log("bob")) == 10


@pytest.mark.parametrize(
    ("registry", "code"),
    [(Registry(), ErrorCode.NAME_TAKEN), (Registry(max_clients=1), ErrorCode.TOO_MANY_CLIENTS)],
    ids=["name-taken", "too-many-clients"],
)
async def test_a_refused_connect_raises_server_refused(registry: Registry, code: ErrorCode) -> None:
    registry = Registry(max_clients=registry.max_clients)  # fresh for each backend
    async with serving(registry=registry) as server:
        name = "bob" if code is ErrorCode.NAME_TAKEN else "alice"
        async with await connect("bob", port=server.port):
            with pytest.raises(ServerRefused) as refused:
                await connect(name, port=server.port)
        assert refused.value.code is code
        assert isinstance(refused.value, LogatronError)
        assert code.value in str(refused.value)


async def test_an_invalid_name_is_refused_before_connecting() -> None:
    with pytest.raises(LocalProtocolError):
        await connect("not a name", port=1)


async def test_an_unreachable_server_raises_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(OSError):
            await connect("bob", port=port)


async def test_non_fatal_errors_are_kept() -> None:
    async with serving(registry=Registry(max_state_keys=1)) as server:
        async with await connect("bob", port=server.port) as client:
            await client.set("one", "1")
            await client.set("two", "2")
            await client.ping()
            assert [error.code for error in client.errors] == [ErrorCode.TOO_MANY_KEYS]
            with pytest.raises(LocalProtocolError):
                await client.set("bad key", "x")


async def test_ping_times_out_against_a_silent_server() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep_forever()

    async with fake_server(silent) as port:
        with pytest.raises(TimeoutError):
            await connect("bob", port=port, timeout=0.2)


async def test_ping_times_out_after_connect() -> None:
    async def answer_once(stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"PING" not in data:
            data += await stream.receive()
        token = data.split(b"PING ", 1)[1].split(b"\n", 1)[0]
        await stream.send(b"PONG " + token + b"\n")
        await anyio.sleep_forever()

    async with fake_server(answer_once) as port, await connect("bob", port=port) as client:
        with pytest.raises(TimeoutError):
            await client.ping(timeout=0.2)


async def test_the_server_going_away_raises_connection_lost() -> None:
    async with anyio.create_task_group() as tg:
        server = LogatronServer(port=0)
        await tg.start(server.serve)
        client = await connect("bob", port=server.port)
        tg.cancel_scope.cancel()
    async with client:
        with pytest.raises(ConnectionLost):
            await client.ping(timeout=5)
        with pytest.raises(ConnectionLost):
            await client.log("too late")


async def test_a_garbled_reply_raises_connection_lost() -> None:
    async def garbled(stream: anyio.abc.SocketStream) -> None:
        await stream.receive()
        await stream.send(b"HELLO there\n")
        await anyio.sleep_forever()

    async with fake_server(garbled) as port:
        with pytest.raises(ConnectionLost):
            await connect("bob", port=port, timeout=5)


async def test_the_readme_example() -> None:
    """The README's async client and embedded server examples, with an ephemeral port."""
    async with anyio.create_task_group() as tg:
        server = LogatronServer(port=0)
        await tg.start(server.serve)
        async with server.events() as events:
            async with await connect("worker-1", "127.0.0.1", server.port) as client:
                await client.set("phase", "build")
                await client.log("starting", "a second line")
                await client.ping(timeout=5)  # every line above is now stored
            with anyio.fail_after(5):
                seen = [type(await anext(events)).__name__ for _ in range(4)]
        tg.cancel_scope.cancel()
    assert seen == ["ClientReady", "StateSet", "Logged", "ClientClosed"]
    assert [entry.message for entry in server.registry.log("worker-1")] == [
        "starting",
        "a second line",
    ]
