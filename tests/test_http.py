"""The HTTP API and the WebSocket tail, on asyncio and trio, over real sockets."""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from logatron_anyio import (
    Consumer,
    ConsumerError,
    Current,
    Gap,
    HttpServer,
    LogatronServer,
    NotFound,
    TailEvent,
    TailOptions,
    Unauthorized,
    Unreachable,
)
from logatron_anyio._http import HttpConnection
from logatron_anyio._messages import client_json
from logatron_anyio._routes import ApiRequest, Reply, Route
from logatron_core import Registry

pytestmark = pytest.mark.anyio

TIMEOUT = 10


@dataclass
class Servers:
    registry: Registry
    tcp_port: int
    http_port: int
    http: HttpServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@asynccontextmanager
async def serving(
    registry: Registry | None = None,
    *,
    token: str | None = None,
    tail: TailOptions | None = None,
    **limits: Any,
) -> AsyncIterator[Servers]:
    """A TCP and an HTTP server on one registry; ``limits`` are HttpServer's."""
    registry = registry or Registry()
    tcp = LogatronServer(port=0, registry=registry)
    http = HttpServer(registry, port=0, token=token, tail_options=tail, **limits)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(tcp.serve)
            await tg.start(http.serve)
            yield Servers(registry, tcp.port, http.port, http)
            tg.cancel_scope.cancel()


@asynccontextmanager
async def tcp_client(servers: Servers, name: str) -> AsyncIterator[anyio.abc.SocketStream]:
    stream = await anyio.connect_tcp("127.0.0.1", servers.tcp_port)
    async with stream:
        await stream.send(f"IAM {name}\n".encode())
        yield stream


async def until(condition: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms; fails after ``within`` s."""
    for _ in range(int(within * 100)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the condition did not hold in time")


async def ping(stream: anyio.abc.SocketStream) -> None:
    """PING and wait for PONG: every line sent before is in the registry."""
    await stream.send(b"PING sync\n")
    data = b""
    with anyio.fail_after(TIMEOUT):
        while b"PONG sync\n" not in data:
            data += await stream.receive()


async def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body)."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    data = b""
    async with stream:
        await stream.send(request)
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def get(
    port: int, path: str, headers: tuple[str, ...] = (), method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{header}\r\n" for header in headers)
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
    return await raw_http(port, request.encode())


async def get_json(port: int, path: str, *headers: str) -> tuple[int, Any]:
    status, _, body = await get(port, path, headers)
    return status, json.loads(body)


class RawTail:
    """A WebSocket client that reads only when asked (to play a slow or rude subscriber)."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int, target: str) -> AsyncIterator[RawTail]:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            tail = cls(stream)
            await stream.send(tail.ws.send(Request(host="x", target=target)))
            event = await tail.next_event()
            assert isinstance(event, AcceptConnection), event
            yield tail

    async def next_event(self) -> Any:
        with anyio.fail_after(TIMEOUT):
            while not self.pending:
                try:
                    data: bytes | None = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = None
                self.ws.receive_data(data)
                self.pending.extend(self.ws.events())
                if data is None and not self.pending:
                    raise EOFError("connection closed")
            return self.pending.pop(0)

    async def next_message(self) -> dict[str, Any]:
        """The next JSON message (pings are answered on the way)."""
        parts: list[str] = []
        while True:
            event = await self.next_event()
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if not event.message_finished:
                    continue
                message: dict[str, Any] = json.loads("".join(parts))
                return message
            if isinstance(event, Ping):
                await self.stream.send(self.ws.send(event.response()))
            else:
                raise AssertionError(f"expected a message, got {event!r}")

    async def messages_until_current(self) -> list[dict[str, Any]]:
        messages = [await self.next_message()]
        while messages[-1]["type"] != "current":
            messages.append(await self.next_message())
        return messages


# -- routes --------------------------------------------------------------------------------------


async def test_every_route_answers_json() -> None:
    async with serving(Registry(buffer_size=3)) as servers, tcp_client(servers, "bob") as bob:
        await bob.send(b"LOG one\nLOG two\nSET mood fine\nLOG three\nLOG four\n")
        async with tcp_client(servers, "ann") as ann:
            await ann.send(b"LOG hi ann\n")
            await ping(ann)
        await ping(bob)
        port = servers.http_port

        status, body = await get_json(port, "/api/clients?lines=1")
        assert status == 200 and body["last_seq"] == 5
        assert {c["name"]: c["connected"] for c in body["clients"]} == {"ann": False, "bob": True}
        bob_json = next(c for c in body["clients"] if c["name"] == "bob")
        assert [e["message"] for e in bob_json["log"]] == ["four"]
        assert bob_json["state"] == {"mood": "fine"} and bob_json["lines_evicted"] == 1

        status, body = await get_json(port, "/api/clients/bob")
        assert status == 200 and [e["seq"] for e in body["log"]] == [2, 3, 4]

        status, body = await get_json(port, "/api/clients/bob/log?since=2&limit=1")
        assert status == 200 and [e["message"] for e in body["entries"]] == ["three"]

        status, body = await get_json(port, "/api/clients/bob/state")
        assert (status, body) == (200, {"client": "bob", "state": {"mood": "fine"}})

        status, body = await get_json(port, "/api/recent?since=2")
        assert [(e["client"], e["seq"]) for e in body["entries"]] == [
            ("bob", 3),
            ("bob", 4),
            ("ann", 5),
        ]
        status, body = await get_json(port, "/api/recent?client=ann")
        assert [e["message"] for e in body["entries"]] == ["hi ann"]

        assert await get_json(port, "/healthz") == (200, {"status": "ok"})

        status, headers, page = await get(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"<title>Logatron</title>" in page and b"/api/tail" in page


async def test_tail_n_gives_the_newest_entries() -> None:
    """``?tail=N``: the newest N of what ``since`` and ``client`` select, oldest first; a run
    of lines that arrived together is cut where N ends."""
    async with serving() as servers, tcp_client(servers, "bob") as bob:
        await bob.send(b"LOG b1\nLOG b2\nLOG b3\n")  # one run: seqs 1-3
        await ping(bob)
        async with tcp_client(servers, "ann") as ann:
            await ann.send(b"LOG a4\n")
            await ping(ann)
        await bob.send(b"LOG b5\nLOG b6\n")
        await ping(bob)
        port = servers.http_port

        async def seqs(path: str) -> list[int]:
            status, body = await get_json(port, path)
            assert status == 200, body
            assert body["last_seq"] == 6
            return [entry["seq"] for entry in body["entries"]]

        assert await seqs("/api/recent?tail=4") == [3, 4, 5, 6]
        assert await seqs("/api/recent?tail=100") == [1, 2, 3, 4, 5, 6]
        assert await seqs("/api/recent?tail=0") == []
        assert await seqs("/api/recent?tail=2&since=5") == [6]
        assert await seqs("/api/recent?tail=2&client=ann") == [4]
        assert await seqs("/api/clients/bob/log?tail=3") == [3, 5, 6]
        assert await seqs("/api/clients/bob/log?tail=2&since=1") == [5, 6]
        assert await seqs("/api/recent?limit=2") == [1, 2]  # the oldest, paging forward
        _, body = await get_json(port, "/api/clients/bob/log?tail=1")
        assert body["entries"] == [
            {"client": "bob", "seq": 6, "timestamp": body["entries"][0]["timestamp"],
             "message": "b6", "truncated": False}
        ]  # fmt: skip


async def test_metrics_use_the_prometheus_text_format() -> None:
    async with serving() as servers, tcp_client(servers, "m") as client:
        await client.send(b"LOG x\nBOGUS\n")
        await ping(client)
        status, headers, body = await get(servers.http_port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = body.decode().splitlines()
    assert "logatron_lines_received_total 1" in lines
    assert 'logatron_errors_total{code="unknown-command"} 1' in lines
    assert 'logatron_clients{status="connected"} 1' in lines
    assert "logatron_connections 1" in lines
    assert "# TYPE logatron_tail_lagged_events_total counter" in lines
    for line in lines:  # every sample belongs to a declared family
        assert line.startswith("#") or line.split("{")[0].split()[0] in body.decode()


async def test_head_answers_without_a_body() -> None:
    async with serving() as servers:
        status, headers, body = await get(servers.http_port, "/healthz", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serving() as servers:
        one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        _, _, body = await raw_http(servers.http_port, one + one + last)
    assert body.count(b'{"status":"ok"}') == 3


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/recent?tail=-1", 400, "bad-request"),
        ("/api/recent?tail=x", 400, "bad-request"),
        ("/api/recent?tail=2&limit=2", 400, "bad-request"),
        ("/api/clients/ghost/log?tail=2", 404, "no-such-client"),
        ("/api/clients/ghost", 404, "no-such-client"),
        ("/api/clients/ghost/log", 404, "no-such-client"),
        ("/api/clients/ghost/state", 404, "no-such-client"),
        ("/api/recent?client=ghost", 404, "no-such-client"),
        ("/nowhere", 404, "not-found"),
        ("/api/clients/a/b/c", 404, "not-found"),
        ("/api/recent?since=abc", 400, "bad-request"),
        ("/api/recent?since=-1", 400, "bad-request"),
        ("/api/recent?limit=0", 400, "bad-request"),
        ("/api/recent?client=bad%20name", 400, "bad-request"),
        ("/api/clients/b%C3%A9b", 400, "bad-request"),
        ("/api/clients/a%2Fb", 400, "bad-request"),
        ("/api/clients/", 404, "not-found"),
    ],
)
async def test_bad_requests_get_json_errors(path: str, status: int, code: str) -> None:
    async with serving() as servers:
        got_status, body = await get_json(servers.http_port, path)
    assert got_status == status and body["code"] == code and body["error"]


async def test_wrong_method_gets_405_with_allow() -> None:
    async with serving() as servers:
        status, headers, body = await get(servers.http_port, "/api/clients", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert json.loads(body)["code"] == "method-not-allowed"


async def test_an_unknown_path_is_404_whatever_the_method() -> None:
    async with serving() as servers:
        status, _, body = await get(servers.http_port, "/nowhere", method="POST")
        assert status == 404 and json.loads(body)["code"] == "not-found"
        upgrade = ("Upgrade: websocket", "Connection: Upgrade")
        status, headers, _ = await get(servers.http_port, "/api/tail", upgrade, method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_malformed_http_gets_400_and_ingest_goes_on() -> None:
    async with serving() as servers, tcp_client(servers, "steady") as client:
        status, _, body = await raw_http(servers.http_port, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and json.loads(body)["code"] == "bad-request"
        await client.send(b"LOG still here\n")
        await ping(client)
        assert [e.message for e in servers.registry.log("steady")] == ["still here"]


async def test_oversized_headers_get_431_and_a_bound_on_memory() -> None:
    async with serving() as servers:
        huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        status, _, body = await raw_http(servers.http_port, huge)
        assert status == 431 and json.loads(body)["code"] == "headers-too-large"
        long_line = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n"
        status, _, _ = await raw_http(servers.http_port, long_line)
        assert status == 431


async def test_a_smaller_header_limit_is_kept_too() -> None:
    async with serving(max_header_bytes=1024) as servers:
        status, _, body = await get(servers.http_port, "/healthz", ("X-Big: " + "a" * 1100,))
        assert status == 431 and json.loads(body)["code"] == "headers-too-large"
        status, _, _ = await get(servers.http_port, "/healthz", ("X-Big: " + "a" * 900,))
        assert status == 200


async def test_a_large_request_body_gets_413_and_the_connection_ends() -> None:
    async with serving() as servers:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
        status, headers, body = await raw_http(servers.http_port, request + b"x" * 200_000)
    assert status == 413 and json.loads(body)["code"] == "body-too-large"
    assert headers["connection"] == "close"


async def test_a_body_over_a_small_limit_gets_413_and_one_under_it_is_ignored() -> None:
    async with serving(max_body_bytes=100) as servers:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        status, _, body = await raw_http(servers.http_port, request % 101 + b"x" * 101)
        assert status == 413 and json.loads(body)["code"] == "body-too-large"
        request = request.replace(b"Host: x", b"Host: x\r\nConnection: close")
        status, _, body = await raw_http(servers.http_port, request % 100 + b"x" * 100)
        assert (status, body) == (200, b'{"status":"ok"}')


async def test_header_limit_does_not_depend_on_how_bytes_arrive() -> None:
    async with serving() as servers:
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        status, _, _ = await raw_http(servers.http_port, request)  # one write
    assert status == 431


async def test_a_request_head_trickling_in_is_cut_off() -> None:
    async with serving(head_timeout=0.5) as servers:
        stream = await anyio.connect_tcp("127.0.0.1", servers.http_port)
        async with stream:
            started = anyio.current_time()
            with anyio.fail_after(TIMEOUT):
                try:
                    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
                        await stream.send(bytes([byte]))
                        await anyio.sleep(0.1)
                    raise AssertionError("the server waited for the whole trickle")
                except (anyio.BrokenResourceError, OSError):
                    pass
            assert anyio.current_time() - started < 5


async def test_past_the_connection_limit_a_new_one_gets_503() -> None:
    async with serving(max_connections=2) as servers:
        idle = [await anyio.connect_tcp("127.0.0.1", servers.http_port) for _ in range(2)]
        try:
            await until(lambda: servers.http.open_connections == 2)
            status, headers, body = await get(servers.http_port, "/healthz")
            assert status == 503 and json.loads(body) == {
                "error": "too many open connections",
                "code": "too-busy",
            }
            assert headers["content-type"].startswith("application/json")
            assert headers["connection"] == "close"
        finally:
            for stream in idle:
                await stream.aclose()
        await until(lambda: servers.http.open_connections == 0)
        assert (await get(servers.http_port, "/healthz"))[0] == 200


async def test_an_answer_to_a_peer_that_stops_reading_is_given_up() -> None:
    async with serving(send_timeout=0.2) as servers:
        stream = await anyio.connect_tcp("127.0.0.1", servers.http_port)
        async with stream:
            # ~30 MB of status pages asked for and never read: the socket's buffers fill up.
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
            await until(lambda: servers.http.open_connections == 1)
            await until(lambda: servers.http.open_connections == 0)
        assert (await get(servers.http_port, "/healthz"))[0] == 200


async def test_an_unexpected_error_gets_a_json_500_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: ApiRequest) -> Reply:
        raise RuntimeError("a bug")

    async with serving() as servers:
        servers.http.routes.add(Route("GET", "/broken", broken))
        with caplog.at_level(logging.ERROR, logger="logatron.http"):
            status, headers, body = await get(servers.http_port, "/broken")
        assert status == 500 and headers["content-type"].startswith("application/json")
        assert json.loads(body) == {"error": "internal error", "code": "internal-error"}
        [record] = [r for r in caplog.records if r.name == "logatron.http"]
        assert "/broken" in record.getMessage() and record.exc_info is not None
        assert "RuntimeError: a bug" in caplog.text
        # The same connection goes on, and so does the server.
        again = b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _, body = await raw_http(servers.http_port, again + last)
        assert status == 500 and body.endswith(b'{"status":"ok"}')
        assert await get_json(servers.http_port, "/healthz") == (200, {"status": "ok"})


# -- auth ----------------------------------------------------------------------------------------

PROTECTED = {
    "/metrics": 200,
    "/api/clients": 200,
    "/api/clients/a": 200,
    "/api/clients/a/log": 200,
    "/api/clients/a/state": 200,
    "/api/recent": 200,
    "/api/tail": 426,  # a WebSocket: see test_tail_websocket_needs_the_token_too
}


@pytest.mark.parametrize(("path", "allowed"), PROTECTED.items())
async def test_every_route_but_healthz_needs_the_token(path: str, allowed: int) -> None:
    async with serving(token="s3cret") as servers, tcp_client(servers, "a") as client:
        await ping(client)
        port = servers.http_port
        for headers in [(), ("Authorization: Bearer wrong",), ("Authorization: Basic s3cret",)]:
            status, response_headers, body = await get(port, path, headers)
            assert status == 401 and json.loads(body)["code"] == "unauthorized"
            assert response_headers["www-authenticate"].startswith("Bearer")
        status, _, _ = await get(port, path, ("Authorization: Bearer s3cret",))
        assert status == allowed
        status, _, _ = await get(port, path + "?token=s3cret")
        assert status == allowed
        assert (await get(port, "/healthz"))[0] == 200


async def test_the_status_page_shell_needs_no_token() -> None:
    """The page itself holds no data; it asks for the token (the API it reads needs one)."""
    async with serving(token="s3cret") as servers, tcp_client(servers, "secret-name") as client:
        await ping(client)
        status, headers, page = await get(servers.http_port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'id="token-input"' in page and b"secret-name" not in page
        assert (await get(servers.http_port, "/api/clients"))[0] == 401


async def test_tail_websocket_needs_the_token_too() -> None:
    async with serving(token="s3cret") as servers:
        with pytest.raises(Unauthorized):
            async with Consumer(servers.url, token="wrong").tail(reconnect=False) as events:
                async for _ in events:
                    pass
        async with Consumer(servers.url, token="s3cret").tail(reconnect=False) as events:
            assert await events.__anext__() == Current(0)


# -- the tail ------------------------------------------------------------------------------------


async def test_tail_sends_backlog_current_then_live_events() -> None:
    async with serving() as servers, tcp_client(servers, "bob") as bob:
        await bob.send(b"LOG old\n")
        await ping(bob)
        async with RawTail.open(servers.http_port, "/api/tail?since=0") as tail:
            first = await tail.messages_until_current()
            assert [(m["type"], m.get("message")) for m in first] == [
                ("log", "old"),
                ("current", None),
            ]
            assert first[-1]["last_seq"] == 1
            await bob.send(b"LOG new\nSET k v\n")
            live = await tail.next_message()
            assert (live["type"], live["seq"], live["message"]) == ("log", 2, "new")
            assert await tail.next_message() == {
                "type": "set",
                "client": "bob",
                "key": "k",
                "value": "v",
                "timestamp": pytest.approx(live["timestamp"], abs=5),
            }
            async with tcp_client(servers, "carol") as carol:
                await ping(carol)
                ready = await tail.next_message()
                assert (ready["type"], ready["client"]) == ("ready", "carol")
            closed = await tail.next_message()
            assert (closed["type"], closed["client"]) == ("close", "carol")


async def test_tail_of_one_client_filters_the_others() -> None:
    async with serving() as servers, tcp_client(servers, "a") as a, tcp_client(servers, "b") as b:
        await ping(a)
        await ping(b)
        async with RawTail.open(servers.http_port, "/api/tail?client=b") as tail:
            await tail.messages_until_current()
            await a.send(b"LOG for a\n")
            await ping(a)
            await b.send(b"LOG for b\n")
            message = await tail.next_message()
            assert (message["client"], message["message"]) == ("b", "for b")


async def test_no_entry_lost_or_repeated_at_the_seam() -> None:
    """Lines written while tails connect and send their backlog are each seen exactly once."""
    total = 3000
    async with serving(Registry(buffer_size=10_000)) as servers, tcp_client(servers, "w") as w:
        seen: list[list[int]] = []

        async def follow(since: int) -> None:
            seqs: list[int] = []
            seen.append(seqs)
            async with RawTail.open(servers.http_port, f"/api/tail?since={since}") as tail:
                while not seqs or seqs[-1] < total:
                    message = await tail.next_message()
                    if message["type"] == "log":
                        seqs.append(message["seq"])

        async with anyio.create_task_group() as tg:
            for batch in range(30):
                await w.send(b"".join(b"LOG %d\n" % (batch * 100 + i) for i in range(100)))
                if batch % 6 == 3:
                    await ping(w)
                    tg.start_soon(follow, servers.registry.last_seq // 2)
                await anyio.lowlevel.checkpoint()
            await ping(w)
        assert len(seen) == 5
        for seqs in seen:
            assert seqs == list(range(seqs[0], total + 1))


async def test_gap_says_how_many_entries_were_evicted() -> None:
    async with serving(Registry(buffer_size=2)) as servers, tcp_client(servers, "g") as g:
        await g.send(b"LOG 1\nLOG 2\nLOG 3\nLOG 4\nLOG 5\n")
        await ping(g)
        async with RawTail.open(servers.http_port, "/api/tail?since=1") as tail:
            messages = await tail.messages_until_current()
    assert messages[0] == {"type": "gap", "missed": 2}
    assert [m.get("seq") for m in messages[1:]] == [4, 5, None]


@pytest.mark.parametrize(
    ("query", "gap", "seqs"),
    [
        ("tail=1", None, [5]),
        ("tail=0", None, []),
        ("tail=3&since=1", 1, [4, 5]),  # of the newest 3 after 1, seq 3 is gone
        ("tail=2&since=1", None, [4, 5]),  # the newest 2 are all there
        ("tail=9", None, [4, 5]),  # no cursor: nothing is said missed
    ],
)
async def test_tail_n_starts_the_tail_with_the_newest_entries(
    query: str, gap: int | None, seqs: list[int]
) -> None:
    async with serving(Registry(buffer_size=2)) as servers, tcp_client(servers, "g") as g:
        await g.send(b"LOG 1\nLOG 2\nLOG 3\nLOG 4\nLOG 5\n")
        await ping(g)
        async with RawTail.open(servers.http_port, f"/api/tail?{query}") as tail:
            messages = await tail.messages_until_current()
            await g.send(b"LOG 6\n")
            live = await tail.next_message()
    expected_gap = [] if gap is None else [{"type": "gap", "missed": gap}]
    assert messages[: len(expected_gap)] == expected_gap
    assert [m["seq"] for m in messages[len(expected_gap) : -1]] == seqs
    assert messages[-1] == {"type": "current", "last_seq": 5}
    assert live["seq"] == 6


async def test_tail_rejects_bad_cursor_and_bad_client() -> None:
    async with serving() as servers:
        port = servers.http_port
        upgrade = (
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        )
        status, _, body = await get(port, "/api/tail?since=x", upgrade)
        assert status == 400 and json.loads(body)["code"] == "bad-request"
        status, _, _ = await get(port, "/api/tail?client=a%20b", upgrade)
        assert status == 400
        status, _, body = await get(port, "/api/tail", upgrade[2:])  # no Upgrade header
        assert status == 426 and json.loads(body)["code"] == "upgrade-required"


async def test_a_stalled_subscriber_lags_and_never_slows_ingest() -> None:
    async with (
        serving(tail=TailOptions(max_queue_lines=50)) as servers,
        tcp_client(servers, "fast") as fast,
    ):
        async with RawTail.open(servers.http_port, "/api/tail") as stalled:
            await stalled.messages_until_current()
            line = b"LOG " + b"z" * 2000 + b"\n"
            with anyio.fail_after(TIMEOUT):  # ingest finishes although nobody reads the tail
                for _ in range(40):
                    await fast.send(line * 250)
                await ping(fast)
            assert servers.registry.stats.lines_received == 10_000
            assert servers.http.tail_options.lagged_total > 0
            types = set()
            with anyio.fail_after(TIMEOUT):
                while "lagged" not in types:
                    types.add((await stalled.next_message())["type"])


async def test_server_pings_and_closes_a_tail_that_never_answers() -> None:
    async with serving(tail=TailOptions(ping_interval=0.2)) as servers:
        async with RawTail.open(servers.http_port, "/api/tail") as tail:
            assert isinstance(await tail.next_event(), TextMessage)  # current
            assert isinstance(await tail.next_event(), Ping)
            event = await tail.next_event()  # no pong sent: the server gives up
            while isinstance(event, Ping):
                event = await tail.next_event()
            assert isinstance(event, CloseConnection)
            assert event.code == 1011 and "pong" in (event.reason or "")


async def test_websocket_protocol_violation_closes_with_1002() -> None:
    async with serving() as servers:
        async with RawTail.open(servers.http_port, "/api/tail") as tail:
            await tail.next_message()
            await tail.stream.send(b"\x81\x05hello")  # an unmasked frame from a client
            event = await tail.next_event()
            assert isinstance(event, CloseConnection) and event.code == 1002 and event.reason


@asynccontextmanager
async def http_only(registry: Registry, port: int = 0) -> AsyncIterator[HttpServer]:
    """An HTTP server that stops (closing its tails) when the block ends."""
    http = HttpServer(registry, port=port)
    async with anyio.create_task_group() as tg:
        await tg.start(http.serve)
        yield http
        tg.cancel_scope.cancel()


async def test_shutdown_closes_tails_with_a_reason() -> None:
    registry = Registry()
    async with http_only(registry) as http:
        tail_cm = RawTail.open(http.port, "/api/tail")
        tail = await tail_cm.__aenter__()
        await tail.next_message()
    try:
        event = await tail.next_event()
        assert isinstance(event, CloseConnection)
        assert (event.code, event.reason) == (1001, "server shutting down")
    finally:
        await tail_cm.__aexit__(None, None, None)


# -- the consumer library ------------------------------------------------------------------------


async def test_consumer_queries_and_distinct_errors() -> None:
    async with serving() as servers, tcp_client(servers, "c1") as client:
        await client.send(b"LOG a\nSET k v\n")
        await ping(client)
        consumer = Consumer(servers.url)
        assert list(await consumer.clients()) == ["c1"]
        assert (await consumer.client("c1")).log[0].message == "a"
        assert await consumer.state("c1") == {"k": "v"}
        assert [e.message for e in await consumer.recent("c1")] == ["a"]
        with pytest.raises(NotFound):
            await consumer.state("ghost")


@pytest.mark.parametrize(("since", "newest", "backlog"), [(0, None, [1, 2, 3]), (None, 1, [3])])
async def test_consumer_tail_resumes_without_loss_or_repeat_after_a_drop(
    since: int | None, newest: int | None, backlog: list[int]
) -> None:
    """The backlog asked for (after ``since``, or the ``newest``), then, after a reconnect,
    every line after the last one seen, however many."""
    registry = Registry(buffer_size=1000)
    async with serving(registry) as servers, tcp_client(servers, "r") as r:
        await r.send(b"LOG 1\nLOG 2\nLOG 3\n")
        await ping(r)
        consumer = Consumer(servers.url)
        assert [e.seq for e in await consumer.recent(newest=2)] == [2, 3]
        assert [e.seq for e in await consumer.recent("r", since=2, newest=5)] == [3]
        seen: list[TailEvent] = []
        connects: list[None] = []
        retried: list[ConsumerError | None] = []

        async def until_current() -> None:
            with anyio.fail_after(TIMEOUT):
                async for event in events:
                    seen.append(event)
                    if isinstance(event, Current):
                        return

        async with http_only(registry) as http:
            port = http.port
            consumer = Consumer(f"http://127.0.0.1:{port}", timeout=2)
            events = consumer.tail(
                since=since,
                newest=newest,
                on_connect=lambda: connects.append(None),
                on_retry=retried.append,
                max_backoff=0.2,
            )
            await until_current()
        # The server went away (the tail was closed); lines arrive while it is down.
        await r.send(b"LOG 4\nLOG 5\n")
        await ping(r)
        async with http_only(registry, port):
            await until_current()
            await events.aclose()
    assert [getattr(e, "seq", e) for e in seen] == [*backlog, Current(3), 4, 5, Current(5)]
    assert len(connects) == 2
    assert retried[0] is None  # the server closed (1001); then it may have been unreachable
    assert all(isinstance(error, Unreachable) for error in retried[1:])


async def test_consumer_tail_surfaces_a_gap() -> None:
    async with serving(Registry(buffer_size=1)) as servers, tcp_client(servers, "g") as g:
        await g.send(b"LOG 1\nLOG 2\nLOG 3\n")
        await ping(g)
        events = []
        async with Consumer(servers.url).tail(since=0, reconnect=False) as stream:
            async for event in stream:
                events.append(event)
                if isinstance(event, Current):
                    break
    assert isinstance(events[0], Gap) and events[0].missed == 2


async def test_a_tail_whose_reader_stalls_is_closed_after_a_missed_pong() -> None:
    await _a_stalled_tail_is_closed(tail=TailOptions(ping_interval=0.3))


async def test_a_tail_whose_reader_stalls_is_closed_past_the_send_timeout() -> None:
    await _a_stalled_tail_is_closed(tail=TailOptions(ping_interval=3600), send_timeout=0.3)


async def _a_stalled_tail_is_closed(**options: Any) -> None:
    async with serving(**options) as servers, tcp_client(servers, "busy") as busy:
        async with RawTail.open(servers.http_port, "/api/tail") as stalled:
            await stalled.messages_until_current()  # the tail is subscribed by now
            assert servers.http.tail_options.subscribers == 1
            line = b"LOG " + b"s" * 200 + b"\n"
            for _ in range(40):  # ~8 MB of frames: the writer blocks on the full socket
                await busy.send(line * 1000)
            await ping(busy)
            await until(lambda: servers.http.tail_options.subscribers == 0)
            assert stalled.pending == []  # it never read; the server gave up on it


async def test_a_tail_may_wait_for_a_client_that_has_not_connected_yet() -> None:
    async with serving() as servers:
        async with RawTail.open(servers.http_port, "/api/tail?client=later&since=0") as tail:
            assert await tail.messages_until_current() == [{"type": "current", "last_seq": 0}]
            async with tcp_client(servers, "later") as later:
                await later.send(b"LOG at last\n")
                assert (await tail.next_message())["type"] == "ready"
                assert (await tail.next_message())["message"] == "at last"


async def test_a_cursor_from_before_a_restart_gets_the_whole_backlog() -> None:
    async with serving() as servers, tcp_client(servers, "new") as new:
        await new.send(b"LOG first after restart\n")
        await ping(new)
        async with RawTail.open(servers.http_port, "/api/tail?since=500") as tail:
            messages = await tail.messages_until_current()
    assert [m.get("message") for m in messages] == ["first after restart", None]


async def test_resets_past_the_connection_limit_harm_no_one() -> None:
    async with serving(max_connections=2) as servers:
        idle = [await anyio.connect_tcp("127.0.0.1", servers.http_port) for _ in range(2)]
        await until(lambda: servers.http.open_connections == 2)
        for _ in range(50):  # connect and reset at once, while the server is full
            rude = await anyio.connect_tcp("127.0.0.1", servers.http_port)
            raw = rude.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await rude.aclose()
        for stream in idle:
            await stream.aclose()
        await until(lambda: servers.http.open_connections == 0)
        assert await get_json(servers.http_port, "/healthz") == (200, {"status": "ok"})


async def test_a_request_body_trickling_in_is_cut_off() -> None:
    async with serving(head_timeout=0.5) as servers:
        stream = await anyio.connect_tcp("127.0.0.1", servers.http_port)
        async with stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            started = anyio.current_time()
            with anyio.fail_after(TIMEOUT):
                try:
                    for _ in range(1000):
                        await stream.send(b"b")
                        await anyio.sleep(0.1)
                    raise AssertionError("the server waited for the whole trickle")
                except (anyio.BrokenResourceError, OSError):
                    pass
            assert anyio.current_time() - started < 5


async def test_a_huge_message_to_a_tail_closes_it_with_1009() -> None:
    async with serving() as servers:
        async with RawTail.open(servers.http_port, "/api/tail") as tail:
            await tail.messages_until_current()
            await tail.stream.send(tail.ws.send(BytesMessage(data=b"x" * 100_000)))
            event = await tail.next_event()
            assert isinstance(event, CloseConnection) and event.code == 1009 and event.reason


class _BrokenPeer:
    """A connection reset before the server could say anything."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return b"GET / HTTP/1.1\r\n\r\n"

    async def send(self, data: bytes) -> None:
        raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        raise anyio.BrokenResourceError


async def test_refusing_a_connection_that_is_gone_raises_nothing() -> None:
    limits = HttpServer(Registry()).limits
    await HttpConnection(_BrokenPeer(), limits).refuse_busy()  # type: ignore[arg-type]


async def test_limits_must_be_positive() -> None:
    for limit in ("max_header_bytes", "head_timeout", "send_timeout", "max_connections"):
        with pytest.raises(ValueError, match="positive"):
            limits: dict[str, Any] = {limit: 0}
            HttpServer(Registry(), **limits)


async def test_client_json_is_exactly_the_registry_record() -> None:
    registry = Registry(buffer_size=4)
    async with serving(registry) as servers, tcp_client(servers, "x") as x:
        await x.send(b'LOG one\nLOG "quoted" \\\\ \xc3\xa9\nSET k v\nLOG 3\nLOG 4\nLOG 5\n')
        await ping(x)
        for lines in (0, 2, 10):
            _, body = await get_json(servers.http_port, f"/api/clients?lines={lines}")
            expected = [client_json(info) for info in registry.clients(log_limit=lines).values()]
            assert body["clients"] == expected
        _, body = await get_json(servers.http_port, "/api/clients/x")
        assert body == client_json(registry.client("x"))
