"""HTTPS and WSS on the HTTP port, read scopes (401, 403), and the consumer library over TLS
and through an HTTP proxy's CONNECT tunnel (a small proxy written here), on asyncio and trio.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from logatron_anyio import (
    Consumer,
    Current,
    Forbidden,
    HttpServer,
    LogatronServer,
    Unauthorized,
    Unreachable,
    connect,
)
from logatron_anyio._dial import Proxy, _bypassed, proxy_from_environment
from logatron_core import Authorizer, LogEntry, Registry, TokenGrant
from pki import Pki

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
POLICY = Authorizer(
    [
        TokenGrant.from_secret("r-secret", read=True),
        TokenGrant.from_secret("w-secret", write=("worker-*",)),
    ]
)


@dataclass
class Servers:
    registry: Registry
    tcp: LogatronServer
    http: HttpServer

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http.port}"


@asynccontextmanager
async def serving(pki: Pki, **options: Any) -> AsyncIterator[Servers]:
    """A TCP and an HTTPS server over one registry (``options`` go to HttpServer; its
    ``authorizer`` to both)."""
    registry = Registry()
    authorizer = options.get("authorizer")
    tcp = LogatronServer(
        port=0, registry=registry, ssl_context=pki.server_context(), authorizer=authorizer
    )
    http = HttpServer(registry, port=0, ssl_context=pki.server_context(), **options)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(tcp.serve)
            await tg.start(http.serve)
            yield Servers(registry, tcp, http)
            tg.cancel_scope.cancel()


async def log_lines(servers: Servers, pki: Pki, name: str, *lines: str) -> None:
    async with await connect(
        name, port=servers.tcp.port, ssl_context=pki.client_context(), token="w-secret"
    ) as client:
        await client.log(*lines)
        await client.ping()


async def test_the_api_and_the_tail_over_https_and_wss(pki: Pki) -> None:
    async with serving(pki) as servers:
        await log_lines(servers, pki, "worker-1", "one", "two")
        consumer = Consumer(servers.url, tls=str(pki.ca_file))
        assert list(await consumer.clients()) == ["worker-1"]
        assert [entry.message for entry in await consumer.recent()] == ["one", "two"]
        seen: list[object] = []
        with anyio.fail_after(TIMEOUT):
            async with consumer.tail(since=0) as events:
                async for event in events:
                    seen.append(event)
                    if isinstance(event, Current):
                        await log_lines(servers, pki, "worker-2", "live")
                    if isinstance(event, LogEntry) and event.message == "live":
                        break
        assert [e.message for e in seen if isinstance(e, LogEntry)] == ["one", "two", "live"]


async def test_a_context_or_logatron_tls_ca_is_trusted_and_nothing_else(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(pki) as servers:
        await Consumer(servers.url, tls=pki.client_context()).clients()
        monkeypatch.setenv("LOGATRON_TLS_CA", str(pki.ca_file))
        await Consumer(servers.url).clients()
        with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await Consumer(servers.url, tls=str(pki.stranger_file)).clients()
        with pytest.raises(ValueError, match="https"):
            Consumer(f"http://127.0.0.1:{servers.http.port}", tls=str(pki.ca_file))


async def test_read_scopes_401_403_counted_and_logged(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(pki, authorizer=POLICY) as servers:
        await log_lines(servers, pki, "worker-1", "hello")
        reader = Consumer(servers.url, tls=str(pki.ca_file), token="r-secret")
        assert list(await reader.clients()) == ["worker-1"]
        with caplog.at_level(logging.INFO, logger="logatron.http"):
            with pytest.raises(Forbidden, match="HTTP 403"):
                await Consumer(servers.url, tls=str(pki.ca_file), token="w-secret").clients()
            with pytest.raises(Unauthorized, match="HTTP 401") as missing:
                await Consumer(servers.url, tls=str(pki.ca_file), token="").clients()
            assert not isinstance(missing.value, Forbidden)
            with pytest.raises(Forbidden):  # the tail gives up at once, never retries
                async with Consumer(
                    servers.url, tls=str(pki.ca_file), token="w-secret"
                ).tail() as events:
                    async for _ in events:
                        pass
        metrics = await reader_text(reader, servers)
        assert 'logatron_http_auth_failures_total{code="unauthorized"} 1' in metrics
        assert 'logatron_http_auth_failures_total{code="forbidden"} 2' in metrics
    refusals = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage().split()[1] for record in refusals] == [
        "forbidden",
        "unauthorized",
        "forbidden",
    ]
    assert all("from 127.0.0.1:" in record.getMessage() for record in refusals)
    assert all("secret" not in record.getMessage() for record in caplog.records)


async def reader_text(consumer: Consumer, servers: Servers) -> str:
    """``GET /metrics`` through the consumer's own request machinery."""
    status, body = await consumer._get("/metrics")
    assert status == 200
    return body.decode()


async def test_tcp_refusals_show_in_metrics(pki: Pki) -> None:
    async with serving(pki, authorizer=POLICY) as servers:
        with pytest.raises(Exception, match="unauthorized"):
            await connect("db", port=servers.tcp.port, ssl_context=pki.client_context())
        reader = Consumer(servers.url, tls=str(pki.ca_file), token="r-secret")
        assert 'logatron_errors_total{code="unauthorized"} 1' in await reader_text(reader, servers)


async def test_plain_http_or_silence_on_the_https_port_is_closed(pki: Pki) -> None:
    async with serving(pki, handshake_timeout=0.5) as servers:
        port = servers.http.port
        async with await anyio.connect_tcp("127.0.0.1", port) as plain:
            await plain.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            with anyio.fail_after(TIMEOUT):
                assert await receive_until_closed(plain) is True
        started = anyio.current_time()
        async with await anyio.connect_tcp("127.0.0.1", port) as silent:
            await Consumer(servers.url, tls=str(pki.ca_file)).clients()  # others are served
            with anyio.fail_after(TIMEOUT):
                assert await receive_until_closed(silent) is True
        assert anyio.current_time() - started >= 0.4


async def receive_until_closed(stream: anyio.abc.ByteStream) -> bool:
    try:
        while await stream.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass
    return True


# -- the proxy ---------------------------------------------------------------------------------


@dataclass
class ConnectProxy:
    """A small HTTP proxy: ``CONNECT host:port`` only, one thread per direction of a tunnel.
    It answers ``refuse`` (a status) instead when given one, and keeps each request's line and
    headers in ``requests``."""

    refuse: int | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self._sockets.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            data = client.recv(4096)
            if not data:
                return
            head += data
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        pairs = (line.split(": ", 1) for line in lines[1:])
        headers = {name.lower(): value for name, value in pairs}
        self.requests.append((lines[0], headers))
        method, target, _ = lines[0].split(" ")
        if self.refuse is not None or method != "CONNECT":
            status = self.refuse or 405
            client.sendall(f"HTTP/1.1 {status} No\r\ncontent-length: 0\r\n\r\n".encode())
            client.close()
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=TIMEOUT)
        self._sockets.append(upstream)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pump = threading.Thread(target=self._copy, args=(upstream, client), daemon=True)
        self._threads.append(pump)
        pump.start()
        self._copy(client, upstream)

    @staticmethod
    def _copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Stop: shutting a socket down wakes the thread blocked on it (closing does not)."""
        for sock in [self.listener, *self._sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected, or closed already
            sock.close()
        for thread in self._threads:
            thread.join(TIMEOUT)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    running = ConnectProxy()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_the_consumer_tunnels_through_https_proxy(
    pki: Pki, proxy: ConnectProxy, no_proxy_environment: pytest.MonkeyPatch
) -> None:
    no_proxy_environment.setenv("HTTPS_PROXY", proxy.url.replace("://", "://bob:p%40ss@"))
    async with serving(pki) as servers:
        await log_lines(servers, pki, "worker-1", "through the tunnel")
        consumer = Consumer(servers.url, tls=str(pki.ca_file))
        assert [e.message for e in await consumer.recent()] == ["through the tunnel"]
        with anyio.fail_after(TIMEOUT):
            async with consumer.tail(since=0) as events:
                assert isinstance(await events.__anext__(), LogEntry)  # WSS through it too
        target = f"127.0.0.1:{servers.http.port}"
        assert [line for line, _ in proxy.requests] == [f"CONNECT {target} HTTP/1.1"] * 2
        headers = proxy.requests[0][1]
        assert headers["host"] == target
        assert headers["proxy-authorization"] == "Basic Ym9iOnBAc3M="  # bob:p@ss


async def test_no_proxy_and_http_proxy(
    pki: Pki, proxy: ConnectProxy, no_proxy_environment: pytest.MonkeyPatch
) -> None:
    no_proxy_environment.setenv("https_proxy", proxy.url)
    no_proxy_environment.setenv("NO_PROXY", "example.org, 127.0.0.1")
    async with serving(pki) as servers:
        await Consumer(servers.url, tls=str(pki.ca_file)).clients()
        assert proxy.requests == []
    registry = Registry()
    plain = HttpServer(registry, port=0)
    no_proxy_environment.delenv("NO_PROXY")
    no_proxy_environment.setenv("HTTP_PROXY", proxy.url)
    async with anyio.create_task_group() as tg:
        await tg.start(plain.serve)
        assert await Consumer(f"http://127.0.0.1:{plain.port}").clients() == {}
        tg.cancel_scope.cancel()
    assert proxy.requests[0][0] == f"CONNECT 127.0.0.1:{plain.port} HTTP/1.1"


async def test_a_refusing_proxy_makes_the_server_unreachable(
    pki: Pki, no_proxy_environment: pytest.MonkeyPatch
) -> None:
    refusing = ConnectProxy(refuse=403)
    try:
        no_proxy_environment.setenv("HTTPS_PROXY", refusing.url)
        consumer = Consumer("https://127.0.0.1:9", tls=str(pki.ca_file))
        with pytest.raises(Unreachable, match="the proxy refused the tunnel: 403"):
            await consumer.clients()
    finally:
        refusing.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # no I/O: one backend is enough
@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("127.0.0.1", 2213, "127.0.0.1", True),
        ("127.0.0.1", 2213, "127.0.0.1:2213", True),
        ("127.0.0.1", 2213, "127.0.0.1:2214", False),
        ("logs.example.org", 443, ".example.org", True),
        ("logs.example.org", 443, "example.org", True),
        ("logs.example.org", 443, "ample.org", False),
        ("::1", 2213, "::1", True),
        ("::1", 2213, "[::1]:2213", True),
        ("other", 1, "a, *", True),
        ("other", 1, "", False),
    ],
)
async def test_no_proxy_rules(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert _bypassed(host, port, no_proxy) is bypassed


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_proxy_settings_from_the_environment(
    no_proxy_environment: pytest.MonkeyPatch,
) -> None:
    assert proxy_from_environment("https", "h", 1) is None
    no_proxy_environment.setenv("HTTPS_PROXY", "upper:3128")
    no_proxy_environment.setenv("https_proxy", "http://lower:8080")
    assert proxy_from_environment("https", "h", 1) == Proxy("lower", 8080)
    assert proxy_from_environment("http", "h", 1) is None
    no_proxy_environment.setenv("HTTP_PROXY", "http://cgi:1")
    no_proxy_environment.setenv("REQUEST_METHOD", "GET")  # httpoxy: ignored under CGI
    assert proxy_from_environment("http", "h", 1) is None
    no_proxy_environment.setenv("https_proxy", "https://secure:443")
    with pytest.raises(ValueError, match="http://host:port"):
        proxy_from_environment("https", "h", 1)


def test_connect_proxy_refuses_other_methods() -> None:
    running = ConnectProxy()
    try:
        with closing(socket.create_connection(("127.0.0.1", running.port), TIMEOUT)) as sock:
            sock.sendall(b"GET http://x/ HTTP/1.1\r\nhost: x\r\n\r\n")
            deadline = time.monotonic() + TIMEOUT
            reply = b""
            while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
                reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 405")
    finally:
        running.close()


def test_ssl_module_minimum_is_tls_1_2(pki: Pki) -> None:
    assert pki.server_context().minimum_version is ssl.TLSVersion.TLSv1_2
    assert pki.server_context().num_tickets == 0  # nothing sent unasked after the handshake
    assert pki.client_context().minimum_version is ssl.TLSVersion.TLSv1_2
