"""``--store redis://``: several front ends sharing one store in Redis, on asyncio and trio.

The tests run ``redis-server``s of their own (see ``redis_server``): one per module, emptied
before each test, and one per test for the tests that stop or kill it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import click.testing
import pytest

from logatron_anyio import Consumer, Current, HttpServer, LogatronServer
from logatron_anyio._redis import RedisStore, StoreUnavailable
from logatron_anyio._redis_codec import redact
from logatron_anyio.cli import logatron
from logatron_anyio.cli.common import only
from logatron_core import LogEntry, RemoteRegistry
from redis_server import RedisServer, emptied, free_port, module_redis, own_server
from served import Served, served
from test_http import get, until

TIMEOUT = 10
COMMAND = [sys.executable, "-m", "logatron_anyio"]


redis = pytest.fixture(scope="module")(module_redis)
store_url = pytest.fixture(emptied)
own_redis = pytest.fixture(own_server)


@dataclass
class FrontEnd:
    registry: RemoteRegistry
    store: RedisStore
    tcp_port: int
    http_port: int

    def consumer(self) -> Consumer:
        return Consumer(f"http://127.0.0.1:{self.http_port}", token="")


@asynccontextmanager
async def front_end(
    url: str, *, lease_seconds: float = 10.0, **limits: Any
) -> AsyncIterator[FrontEnd]:
    """A TCP and an HTTP server over one RedisStore, as ``logatron serve --store`` runs them."""
    registry = RemoteRegistry(**limits)
    store = RedisStore(url, registry, lease_seconds=lease_seconds)
    tcp = LogatronServer(port=0, registry=registry, store_driver=store)
    http = HttpServer(registry, port=0, store_health=lambda: store.health)
    async with store.running(), anyio.create_task_group() as tg:
        await tg.start(tcp.serve)
        await tg.start(http.serve)
        yield FrontEnd(registry, store, tcp.port, http.port)
        tg.cancel_scope.cancel()


class Peer:
    """A TCP client of a front end."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def line(self) -> bytes:
        """The next reply line (fails after TIMEOUT or at the end of the connection)."""
        with anyio.fail_after(TIMEOUT):
            while b"\n" not in self.buffer:
                self.buffer += await self.stream.receive()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    async def ended(self) -> bool:
        """True once the server has closed the connection (nothing more to read)."""
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True


@asynccontextmanager
async def peer(port: int, hello: bytes) -> AsyncIterator[Peer]:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(hello)
        yield Peer(stream)


async def get_body(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path``: (status, body)."""
    status, _, body = await get(port, path)
    return status, body


async def backlog(front: FrontEnd, since: int = 0) -> list[Any]:
    """A tail's messages up to ``current``."""
    events: list[Any] = []
    async with front.consumer().tail(since=since, reconnect=False) as tail:
        async for event in tail:
            events.append(event)
            if isinstance(event, Current):
                return events
    raise AssertionError("the tail ended before current")


ROUTES = [
    "/api/clients",
    "/api/clients?lines=2",
    "/api/clients/bob",
    "/api/clients/bob/log?since=2&limit=2",
    "/api/clients/bob/state",
    "/api/clients/amy/state",
    "/api/recent",
    "/api/recent?client=amy&since=1",
    "/api/recent?since=3&limit=2",
    "/api/clients/nobody",
    "/healthz",
    "/",
]


@pytest.mark.anyio
async def test_two_front_ends_give_the_same_answers_and_share_the_limits(store_url: str) -> None:
    limits = {"buffer_size": 3, "max_state_keys": 2, "max_clients": 3, "max_retained": 1}
    async with (
        front_end(store_url, **limits) as a,
        front_end(store_url, **limits) as b,
        peer(a.tcp_port, b"IAM bob\nLOG one\nLOG two\nSET phase build\nPING\n") as bob,
    ):
        assert await bob.line() == b"PONG\n"
        async with peer(b.tcp_port, b"IAM amy\nLOG from b\nSET k1 v\nSET k2 v\nSET k3 v\n") as amy:
            # The key limit holds in Redis: refused late, the connection stays.
            assert await amy.line() == b"ERR too-many-keys amy holds its limit of 2 keys\n"
            await bob.send(b"LOG three\nLOG four\nLOG " + b"t" * 70_000 + b"\nPING\n")
            assert (await bob.line()).startswith(b"ERR line-too-long")
            assert await bob.line() == b"PONG\n"
            # The client limit is the deployment's: two here, a third there, then no more.
            async with peer(a.tcp_port, b"IAM cat\nPING\n") as cat:
                assert await cat.line() == b"PONG\n"
                async with peer(b.tcp_port, b"IAM dan\nLOG lost\n") as dan:
                    assert (await dan.line()).startswith(b"ERR too-many-clients ")
                    assert await dan.ended()
            await amy.send(b"LOG bye\nPING\n")
            assert await amy.line() == b"PONG\n"
        # cat then amy closed: one retained at most, so cat is forgotten, on both.
        await until(lambda: a.registry.names() == b.registry.names() == ["amy", "bob"])
        await until(lambda: a.registry.last_seq == b.registry.last_seq == 7)
        for path in ROUTES:
            status_a, body_a = await get_body(a.http_port, path)
            status_b, body_b = await get_body(b.http_port, path)
            assert (status_a, body_a) == (status_b, body_b), path
            assert status_a == (404 if "nobody" in path else 200), (path, body_a)
        assert json.loads((await get_body(b.http_port, "/healthz"))[1]) == {
            "status": "ok",
            "store": "ok",
        }
        assert [e.message for e in b.registry.log("bob")] == ["three", "four", "t" * 65_532]
        assert b.registry.client("bob").lines_evicted == 2
        assert await backlog(a) == await backlog(b)


@pytest.mark.anyio
async def test_a_tail_resumed_on_another_front_end_misses_and_repeats_nothing(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 3000
    async with (
        front_end(store_url, buffer_size=total) as a,
        front_end(store_url, buffer_size=total) as b,
    ):
        seen: list[LogEntry] = []
        # b's mirror is behind a's when the reader comes to it (the cursor is past b's newest
        # seq): as on a busy machine, where it failed now and then.
        resume = stalled(b.store.mirror, monkeypatch)

        async def ingest() -> None:
            async with peer(a.tcp_port, b"IAM w\n") as w:
                for start in range(0, total, 100):
                    await w.send(b"".join(b"LOG line %d\n" % n for n in range(start, start + 100)))
                    await anyio.sleep(0.002)
                await w.send(b"PING\n")
                assert await w.line() == b"PONG\n"

        async with anyio.create_task_group() as tg:
            tg.start_soon(ingest)
            async with a.consumer().tail("w", since=0, reconnect=False) as tail:
                async for event in tail:
                    if isinstance(event, LogEntry):
                        seen.append(event)
                        if len(seen) == 500:
                            break
            assert b.registry.last_seq < seen[-1].seq
            others = b.registry.stats.subscribers

            async def resume_once_subscribed() -> None:
                await until(lambda: b.registry.stats.subscribers > others)
                resume.set()

            tg.start_soon(resume_once_subscribed)
            with anyio.fail_after(TIMEOUT):
                async with b.consumer().tail("w", since=seen[-1].seq, reconnect=False) as tail:
                    async for event in tail:
                        if isinstance(event, LogEntry):
                            seen.append(event)
                            if len(seen) == total:
                                break
    assert [entry.message for entry in seen] == [f"line {n}" for n in range(total)]
    assert [entry.seq for entry in seen] == list(range(1, total + 1))


@pytest.mark.anyio
async def test_a_name_connected_on_one_front_end_is_taken_on_the_other(store_url: str) -> None:
    async with front_end(store_url) as a, front_end(store_url) as b:
        async with peer(a.tcp_port, b"IAM x\nLOG from a\nPING\n") as x:
            assert await x.line() == b"PONG\n"
            async with peer(b.tcp_port, b"IAM x\nLOG from b\nPING\n") as again:
                assert await again.line() == b"ERR name-taken x is already connected\n"
                assert await again.ended()  # decided in Redis, the connection still ends
            await until(lambda: b.registry.names() == ["x"] and b.registry.counts() == (1, 0))
        await until(lambda: b.registry.counts() == (0, 1))
        async with peer(b.tcp_port, b"IAM x\nLOG from b\nPING\n") as x:
            assert await x.line() == b"PONG\n"  # released when it closed on a
        assert [e.message for e in b.registry.log("x")] == ["from a", "from b"]
        await until(lambda: [e.message for e in a.registry.log("x")] == ["from a", "from b"])


@pytest.mark.anyio
async def test_retention_is_decided_in_redis_for_every_front_end(store_url: str) -> None:
    async with (
        front_end(store_url, retention_seconds=0.3, lease_seconds=1) as a,
        front_end(store_url, retention_seconds=0.3, lease_seconds=1) as b,
    ):
        async with peer(a.tcp_port, b"IAM gone\nLOG bye\nPING\n") as gone:
            assert await gone.line() == b"PONG\n"
        await until(lambda: b.registry.counts() == (0, 1))
        await until(lambda: a.registry.names() == b.registry.names() == [], within=3)
        assert a.registry.stats.clients_expired == b.registry.stats.clients_expired == 1


@pytest.mark.anyio
async def test_front_ends_of_one_deployment_have_its_limits(store_url: str) -> None:
    async with front_end(store_url, buffer_size=3):
        with pytest.raises(BaseException) as raised:
            async with front_end(store_url, buffer_size=4):
                pass
        refused = only(raised.value, StoreUnavailable)
        assert refused is not None and "live front ends with other limits" in str(refused)
        assert "buffer_size=3" in str(refused)
    async with front_end(store_url, buffer_size=4) as alone:  # no live front end: it may
        assert alone.registry.buffer_size == 4


@pytest.mark.anyio
async def test_a_graceful_redis_restart_with_ingest_running_loses_nothing_confirmed(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "logatron.store")
    url = own_redis.url()
    confirmed: list[bytes] = []
    sent: list[bytes] = []
    async with front_end(url, buffer_size=100_000) as a, peer(a.tcp_port, b"IAM w\n") as w:
        restarted = anyio.Event()
        rounds_after = 0

        async def ingest() -> None:
            nonlocal rounds_after
            number = 0
            while rounds_after < 5:
                batch = [b"line %d" % n for n in range(number, number + 50)]
                number += 50
                sent.extend(batch)
                await w.send(b"".join(b"LOG %s\n" % line for line in batch) + b"PING\n")
                assert await w.line() == b"PONG\n"
                confirmed[:] = sent
                if restarted.is_set():
                    rounds_after += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(ingest)
            await until(lambda: len(confirmed) >= 500)
            await anyio.to_thread.run_sync(lambda: own_redis.stop(save=True))
            await until(lambda: a.store.health.failing)
            status, body = await get_body(a.http_port, "/healthz")
            assert status == 503 and json.loads(body)["store"] == "unavailable"
            held = len(sent)
            await anyio.sleep(0.3)
            assert len(confirmed) < held  # the PONG waits for Redis
            await anyio.to_thread.run_sync(own_redis.start)
            restarted.set()
        assert not a.store.health.failing
    async with front_end(url, buffer_size=100_000) as fresh:  # what Redis holds
        stored = [entry.message.encode() for entry in fresh.registry.log("w")]
        assert stored == sent
        assert [e.seq for e in fresh.registry.log("w")] == list(range(1, len(sent) + 1))
    messages = [record.getMessage() for record in caplog.records]
    assert any(text.startswith("cannot reach the store at redis://") for text in messages)
    assert any(text.endswith("is reachable again") for text in messages)


async def flood(peer: Peer, chunk: bytes) -> None:
    """Send ``chunk`` ten times (~8 MiB: more than any bound and the socket buffers), PING."""
    for _ in range(10):
        await peer.send(chunk)
    await peer.send(b"PING\n")


async def until_reading_pauses(registry: RemoteRegistry) -> int:
    """Wait until the server has read nothing more for a while; the bytes it read."""
    received = -1
    with anyio.fail_after(TIMEOUT):
        while registry.stats.bytes_received != received:
            received = registry.stats.bytes_received
            await anyio.sleep(0.3)
    return received


def stalled(mirror: Any, monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """Make the replicator read nothing more (after the read it may be waiting on) until the
    event returned is set."""
    resume, step = anyio.Event(), mirror.step

    async def stalled_step(client: Any, block_ms: int | None = None) -> bool:
        await resume.wait()
        return bool(await step(client, block_ms))

    monkeypatch.setattr(mirror, "step", stalled_step)
    return resume


@pytest.mark.anyio
async def test_while_redis_is_away_a_front_end_buffers_a_bound_then_stops_reading(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("logatron_anyio._redis.MAX_BUFFERED_BYTES", 256 * 1024)
    url = own_redis.url()
    chunk = b"".join(b"LOG %06d flooding while Redis is away\n" % n for n in range(20_000))
    async with front_end(url, buffer_size=200_000) as a, peer(a.tcp_port, b"IAM f\nPING\n") as f:
        assert await f.line() == b"PONG\n"
        await anyio.to_thread.run_sync(lambda: own_redis.stop(save=True))
        async with anyio.create_task_group() as tg:
            tg.start_soon(flood, f, chunk)
            await until(lambda: a.store.health.failing)
            received = await until_reading_pauses(a.registry)
            # The bound, one receive per connection and what was queued when it was passed.
            assert 256 * 1024 < received < 1024 * 1024
            await anyio.sleep(0.3)
            assert a.registry.stats.bytes_received == received
            await anyio.to_thread.run_sync(own_redis.start)
        assert await f.line() == b"PONG\n"
        assert len(a.registry.log("f")) == 200_000


@pytest.mark.anyio
async def test_a_front_end_whose_mirror_stalls_holds_a_bound_of_its_runs_then_stops_reading(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("logatron_anyio._redis.MAX_BUFFERED_BYTES", 256 * 1024)
    chunk = b"".join(b"LOG %06d flooding while the mirror stalls\n" % n for n in range(20_000))
    async with front_end(store_url, buffer_size=200_000) as a, peer(a.tcp_port, b"IAM f\n") as f:
        mirror = a.store.mirror
        resume = stalled(mirror, monkeypatch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(flood, f, chunk)
            received = await until_reading_pauses(a.registry)
            # The bound, a batch (MAX_BATCH_BYTES) and the receives queued when it was passed.
            assert 256 * 1024 < mirror.held_bytes < received < 4 * 1024 * 1024
            resume.set()
        assert await f.line() == b"PONG\n"
        assert len(a.registry.log("f")) == 200_000
        assert mirror.held_bytes == 0


@pytest.mark.anyio
async def test_a_front_end_whose_mirror_stalls_lags_a_bound_of_changes_then_stops_reading(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("logatron_anyio._redis.MAX_MIRROR_LAG", 200)
    # Small enough that Redis acknowledges what was read before much more is: the lag is then
    # what holds reading (Redis has taken everything: nothing is buffered any more).
    monkeypatch.setattr("logatron_anyio._redis.MAX_BUFFERED_BYTES", 64 * 1024)
    sets = b"".join(b"SET k %06d\n" % n for n in range(100_000))  # a change each, few bytes
    async with front_end(store_url) as a, peer(a.tcp_port, b"IAM s\n") as s:
        mirror = a.store.mirror
        resume = stalled(mirror, monkeypatch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.send, sets + b"PING\n")
            received = await until_reading_pauses(a.registry)
            assert mirror.lag > 200 and received < len(sets) // 2
            await until(lambda: a.store._buffered == 0)
            await anyio.sleep(0.3)
            assert a.registry.stats.bytes_received == received  # held by the lag alone
            resume.set()
        assert await s.line() == b"PONG\n"
        assert a.registry.state("s") == {"k": "099999"}
        assert mirror.lag == 0


@pytest.mark.anyio
async def test_a_redis_that_restarts_empty_gets_the_connected_names_again(
    own_redis: RedisServer,
) -> None:
    url = own_redis.url()
    async with (
        front_end(url, lease_seconds=1) as a,
        front_end(url, lease_seconds=1) as b,
        peer(a.tcp_port, b"IAM w\nLOG before\nPING\n") as w,
    ):
        assert await w.line() == b"PONG\n"
        await until(lambda: b.registry.last_seq == 1)
        await anyio.to_thread.run_sync(own_redis.kill)
        await anyio.to_thread.run_sync(own_redis.start)
        await w.send(b"LOG after\nPING\n")
        assert await w.line() == b"PONG\n"
        # Redis lost "before"; w was claimed again and seqs go on above the highest seen.
        await until(lambda: [e.message for e in b.registry.log("w")] == ["after"])
        assert [e.seq for e in b.registry.log("w")] == [2]
        assert b.registry.client("w").connected
        async with peer(b.tcp_port, b"IAM w\n") as again:
            assert await again.line() == b"ERR name-taken w is already connected\n"


# -- logatron serve --store, as subprocesses ---------------------------------------------------


@contextmanager
def serving(url: str, backend: str, *extra: str) -> Iterator[Served]:
    with served("--store", url, "--backend", backend, *extra) as server:
        yield server


def talk(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            assert chunk, f"closed after {reply!r}"
            reply += chunk
        return reply


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_names_of_a_killed_front_end_are_free_within_its_lease(
    redis: RedisServer, store_url: str, backend: str
) -> None:
    lease = ("--lease-seconds", "1")
    with serving(store_url, backend, *lease) as a, serving(store_url, backend, *lease) as b:
        with socket.create_connection(("127.0.0.1", a.port), timeout=TIMEOUT) as held:
            held.sendall(b"IAM x\nLOG before the kill\nPING\n")
            assert held.recv(100) == b"PONG\n"
            assert talk(b.port, b"IAM x\n") == b"ERR name-taken x is already connected\n"
            killed = time.monotonic()
            a.kill(signal.SIGKILL)
            deadline = killed + 1 + 1.5  # the lease, and the janitor's pace (a fifth of it)
            while b.get("/api/clients/x")["connected"]:
                assert time.monotonic() < deadline, "x still shows as connected"
                time.sleep(0.05)
            assert talk(b.port, b"IAM x\nLOG after\nPING\n") == b"PONG\n"
        assert [entry["message"] for entry in b.get("/api/clients/x")["log"]] == [
            "before the kill",
            "after",
        ]
        # The killed front end's runs are kept a while for mirrors still reading, not forever
        # (and b, alone now, writes none: no other front end would read them).
        count = "return #redis.call('KEYS', 'logatron:bodies:*')"
        expiring = ("local n = 0 for _, key in ipairs(redis.call('KEYS', 'logatron:bodies:*')) "
                    "do if redis.call('TTL', key) > 0 then n = n + 1 end end return n")  # fmt: skip
        assert (redis.command("EVAL", count, "0"), redis.command("EVAL", expiring, "0")) == (
            b":1\r\n",
            b":1\r\n",
        )
        b.kill(signal.SIGTERM)
        assert b.process.returncode == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_store_that_cannot_be_reached_is_one_line_and_exit_1(backend: str) -> None:
    closed = free_port()
    result = subprocess.run(
        [*COMMAND, "serve", "--port", "0", "--store", f"redis://127.0.0.1:{closed}/0",
         "--backend", backend],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""  # nothing listened
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"logatron: cannot use the store at redis://127.0.0.1:{closed}/0: ")


BAD_STORES = [
    ("memcached://127.0.0.1:11211", "not 'memory' nor a redis://"),
    ("redis://127.0.0.1:99999", "the port is not a number from 1 to 65535"),
    ("redis://:6379/0", "no host"),
    ("redis://127.0.0.1:6379/zero", "the database ('zero') is not a number"),
    ("redis", "not 'memory' nor a redis://"),
    ("rediss://127.0.0.1:6379/0?ssl_ca_cert=ca.pem", "unknown option 'ssl_ca_cert' (takes ssl_"),
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=ca.pem", "ssl_ca_certs goes with rediss:// only"),
    ("rediss://127.0.0.1:6379/0?ssl_check_hostname=no", "ssl_check_hostname takes true or false"),
    ("rediss://127.0.0.1:6379/0?ssl_ca_certs=/no/such/ca.pem", "cannot use its TLS files: "),
]


@pytest.mark.parametrize(("url", "said"), BAD_STORES)
def test_a_store_url_that_names_no_redis_is_one_line_and_exit_1(url: str, said: str) -> None:
    result = invoke("serve", "--port", "0", LOGATRON_STORE=url)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith(f"logatron: --store {url}: {said}")


def test_a_wrong_password_or_database_is_refused_without_showing_the_password(
    store_url: str,
) -> None:
    port = store_url.split(":")[2].split("/")[0]
    for url, said in [
        (f"redis://someone:hunter2@127.0.0.1:{port}/0", "invalid username-password pair"),
        (f"redis://127.0.0.1:{port}/99", "DB index is out of range"),
    ]:
        result = invoke("serve", "--port", "0", "--store", url)
        assert result.exit_code == 1, result.output
        assert "hunter2" not in result.stderr + result.output
        line = result.stderr.splitlines()[-1]
        assert line.startswith(f"logatron: cannot use the store at {redact(url)}: "), line
        assert said in line


def test_a_password_with_characters_a_url_escapes_is_sent_as_meant(
    redis: RedisServer, store_url: str
) -> None:
    password = "p@ss/w%rd:1"  # each of these must be escaped in a URL's user info
    assert redis.command("ACL", "SETUSER", "escaped", "on", f">{password}", "~*", "&*",
                         "+@all") == b"+OK\r\n"  # fmt: skip
    try:
        url = f"redis://escaped:{urllib.parse.quote(password, safe='')}@127.0.0.1:{redis.port}/0"
        with served("--store", url) as server:
            assert talk(server.port, b"IAM x\nPING\n") == b"PONG\n"
    finally:
        redis.command("ACL", "DELUSER", "escaped")


def test_store_with_a_data_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("serve", "--store", "redis://127.0.0.1:6379", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--data-dir keeps the memory store on disk: not with --store" in result.stderr


def invoke(*args: str, **env: str) -> click.testing.Result:
    """``logatron ARGS`` in this process, with only the ``LOGATRON_*`` variables given."""
    unset: dict[str, str | None] = {key: None for key in os.environ if key.startswith("LOGATRON_")}
    return click.testing.CliRunner().invoke(logatron, args, env={**unset, **env})


def test_the_readmes_two_front_ends_run_as_written(tmp_path: Path) -> None:
    """The README's block, with free ports and a temporary directory for Redis's files."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("<!-- two-front-ends -->", 1)[1].split("```sh\n", 1)[1].split("```")[0]
    lines = block.strip().splitlines()
    ports = {port: str(free_port()) for port in ("6379", "2212", "2213", "2222", "2223")}

    def local(line: str) -> list[str]:
        for port, free in ports.items():
            line = line.replace(port, free)
        line = line.replace("/var/lib/logatron-redis", str(tmp_path))
        return shlex.split(line.removesuffix("&").strip())

    redis_line, *serve_lines, nc_line, curl_line = lines
    assert redis_line.startswith("redis-server ") and curl_line.startswith("curl -s http")
    with contextlib.ExitStack() as stack:
        redis = subprocess.Popen(local(redis_line), stdout=subprocess.DEVNULL)
        stack.callback(redis.wait, TIMEOUT)
        stack.callback(redis.terminate)
        deadline = time.monotonic() + TIMEOUT
        while subprocess.run(["redis-cli", "-p", ports["6379"], "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":  # fmt: skip
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        for line in serve_lines:
            argv = local(line)
            assert argv[:2] == ["logatron", "serve"]
            server = stack.enter_context(served(*argv[2:]))  # its --port flags win
            stack.callback(server.kill, signal.SIGTERM)
        # The nc line as a socket write, the curl line as a GET.
        printed = shlex.split(nc_line.split("|")[0])[1].encode().decode("unicode_escape")
        nc_port = int(local(nc_line.split("|")[1])[-1])
        assert talk(nc_port, printed.encode()) == b"PONG\n"
        url = local(curl_line)[-1]
        deadline = time.monotonic() + TIMEOUT
        while True:  # the second front end has it a moment after the first answered PONG
            recent = json.loads(urllib.request.urlopen(url, timeout=TIMEOUT).read())
            if recent["entries"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert [entry["message"] for entry in recent["entries"]] == ["hello from the first"]
