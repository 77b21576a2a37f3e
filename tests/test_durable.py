"""``logatron serve --data-dir``: restarts, graceful or not, lose nothing a PONG confirmed."""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from logatron_anyio import Consumer, Current, HttpServer, LogatronServer, _durable
from logatron_anyio._durable import DurableStore
from logatron_core import LogEntry, Session
from logatron_sync import LogatronHandler
from served import Served, served
from test_http import get, get_json, until

TIMEOUT = 20
BACKENDS = ["asyncio", "trio"]


@contextmanager
def serving(data_dir: Path, backend: str, *extra: str, port: int = 0) -> Iterator[Served]:
    with served("--data-dir", str(data_dir), "--backend", backend, *extra, port=port) as server:
        yield server


def connect(port: int, hello: bytes) -> socket.socket:
    peer = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    peer.sendall(hello)
    return peer


def expect(peer: socket.socket, reply: bytes) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = peer.recv(1024)
        assert chunk, f"closed after {data!r}"
        data += chunk
    assert data == reply


def log_of(server: Served, name: str) -> list[tuple[int, float, str, bool]]:
    record = server.get(f"/api/clients/{name}")
    return [(e["seq"], e["timestamp"], e["message"], e["truncated"]) for e in record["log"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_right_after_a_pong_loses_nothing_confirmed(tmp_path: Path, backend: str) -> None:
    lines = b"".join(b"LOG line %d  \n" % i for i in range(1000))
    with serving(tmp_path, backend, "--max-line-bytes", "20") as first:
        peer = connect(first.port, b"IAM bob\n" + lines + b"LOG " + b"x" * 40 + b"\n")
        peer.sendall(b"SET phase build\nPING done\n")
        expect(peer, b"ERR line-too-long line longer than 20 bytes, kept cut to the limit\n")
        expect(peer, b"PONG done\n")
        before = log_of(first, "bob")
        first.kill(signal.SIGKILL)  # no chance to write anything more
        peer.close()
    assert len(before) == 128 and before[-1][2:] == ("x" * 16, True)
    with serving(tmp_path, backend) as second:
        record = second.get("/api/clients/bob")
        assert log_of(second, "bob") == before
        assert record["state"] == {"phase": "build"}
        assert (record["lines_received"], record["lines_evicted"]) == (1001, 873)
        assert record["connected"] is False  # retained from the restart on
        with connect(second.port, b"IAM bob\nLOG after\nPING\n") as again:
            expect(again, b"PONG\n")
        assert log_of(second, "bob")[-1][0] > 1001  # seqs continue above any handed out


@pytest.mark.parametrize("backend", BACKENDS)
def test_graceful_restart_keeps_connected_and_retained_clients(
    tmp_path: Path, backend: str
) -> None:
    with serving(tmp_path, backend) as first:
        with connect(first.port, b"IAM gone\nLOG bye\nSET k v\nPING\n") as gone:
            expect(gone, b"PONG\n")
        stayed = connect(first.port, b"IAM stayed\nLOG hi\n")  # no PING: written on SIGTERM
        deadline = time.monotonic() + TIMEOUT
        while first.get("/api/clients/gone")["connected"] and time.monotonic() < deadline:
            time.sleep(0.01)
        gone_record = first.get("/api/clients/gone")
        first.kill(signal.SIGTERM)
        stayed.close()
    restarted_at = time.time()
    with serving(tmp_path, backend) as second:
        clients = {c["name"]: c for c in second.get("/api/clients?lines=10")["clients"]}
        assert set(clients) == {"gone", "stayed"}
        assert clients["gone"]["disconnected_at"] == gone_record["disconnected_at"]
        assert clients["gone"]["state"] == {"k": "v"}
        assert [e["message"] for e in clients["stayed"]["log"]] == ["hi"]
        assert clients["stayed"]["connected"] is False
        assert clients["stayed"]["disconnected_at"] >= restarted_at - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tail_resumed_across_a_restart_gets_only_newer_entries(
    tmp_path: Path, backend: str
) -> None:
    with serving(tmp_path, backend) as first:
        with connect(first.port, b"IAM w\nLOG one\nLOG two\nPING\n") as peer:
            expect(peer, b"PONG\n")
        cursor = first.get("/api/recent")["last_seq"]
        first.kill(signal.SIGKILL)
    with serving(tmp_path, backend) as second:
        with connect(second.port, b"IAM w\nLOG three\nPING\n") as peer:
            expect(peer, b"PONG\n")

        async def resume() -> list[str]:
            consumer = Consumer(f"http://127.0.0.1:{second.http_port}")
            seen: list[str] = []
            with anyio.fail_after(TIMEOUT):
                async with consumer.tail(since=cursor) as events:
                    async for event in events:
                        if isinstance(event, Current):
                            return seen
                        if isinstance(event, LogEntry):
                            seen.append(event.message)
            return seen

        assert anyio.run(resume, backend=backend) == ["three"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_never_gives_a_seq_already_shown_to_another_line(
    tmp_path: Path, backend: str
) -> None:
    """Lines a reader saw before a crash but never written: their seqs are not handed out
    again, so a filtered tail (or ``?since=``) resumed from the last seq it saw gets every
    newer line, with no gap notice; a clean stop then continues seqs right above the newest."""
    with serving(tmp_path, backend, "--flush-interval", "60") as first:
        peer = connect(first.port, b"IAM w\nLOG ok 1\nPING\n")
        expect(peer, b"PONG\n")
        peer.sendall(b"LOG ok 2 unconfirmed\nLOG skip 3 unconfirmed\n")  # no PING: not written
        deadline = time.monotonic() + TIMEOUT
        while len(log_of(first, "w")) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        cursor = first.get("/api/recent")["last_seq"]
        assert cursor == 3
        first.kill(signal.SIGKILL)
        peer.close()
    with serving(tmp_path, backend) as second:
        with connect(second.port, b"IAM w\nLOG ok 4\nLOG skip 5\nLOG ok 6\nPING\n") as peer:
            expect(peer, b"PONG\n")
        after = [(seq, message) for seq, _, message, _ in log_of(second, "w")]
        assert [message for _, message in after] == ["ok 1", "ok 4", "skip 5", "ok 6"]
        assert all(seq > cursor for seq, _ in after[1:])
        entries = second.get(f"/api/recent?since={cursor}")["entries"]
        assert [e["message"] for e in entries] == ["ok 4", "skip 5", "ok 6"]

        async def resume() -> list[object]:
            consumer = Consumer(f"http://127.0.0.1:{second.http_port}")
            seen: list[object] = []
            with anyio.fail_after(TIMEOUT):
                async with consumer.tail("w", since=cursor, exclude=["^skip"]) as events:
                    async for event in events:
                        if isinstance(event, Current):
                            return seen
                        seen.append(event.message if isinstance(event, LogEntry) else event)
            return seen

        assert anyio.run(resume, backend=backend) == ["ok 4", "ok 6"]
        newest = second.get("/api/recent")["last_seq"]
        second.kill(signal.SIGTERM)
    with serving(tmp_path, backend) as third:
        with connect(third.port, b"IAM w\nLOG ok 7\nPING\n") as peer:
            expect(peer, b"PONG\n")
        assert log_of(third, "w")[-1][0] == newest + 1  # a clean stop skips nothing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_handler_delivers_across_a_server_crash(tmp_path: Path, backend: str) -> None:
    port = free_port()
    handler = LogatronHandler("app", "127.0.0.1", port, min_backoff=0.01, max_backoff=0.05)
    log = logging.getLogger("test_durable.handler")
    log.addHandler(handler)
    log.propagate = False
    try:
        with serving(tmp_path, backend, port=port) as first:
            for i in range(50):
                log.warning("before %d", i)
            handler.flush(TIMEOUT)  # every record confirmed by a PONG, so on disk
            first.kill(signal.SIGKILL)
        for i in range(50):
            log.warning("between %d", i)  # queued while the server is down
        with serving(tmp_path, backend, port=port) as second:
            handler.flush(TIMEOUT)
            messages = [entry[2] for entry in log_of(second, "app")]
    finally:
        log.removeHandler(handler)
        handler.close()
    expected = [f"before {i}" for i in range(50)] + [f"between {i}" for i in range(50)]
    assert messages == expected[-len(messages) :] and len(messages) == 100


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logatron_anyio", "serve", "--port", "0", "--no-http", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def refused_with(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("logatron: data dir")
    assert words in result.stderr.splitlines()[-1]


def test_a_data_dir_in_use_by_another_server_is_refused(tmp_path: Path) -> None:
    with serving(tmp_path, "asyncio"):
        refused_with(run_serve("--data-dir", str(tmp_path)), "in use by another logatron")


def test_a_data_dir_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = run_serve("--data-dir", str(tmp_path / "file" / "sub"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"logatron: cannot use data dir {tmp_path}")


def test_a_data_dir_from_a_newer_format_is_refused(tmp_path: Path) -> None:
    with serving(tmp_path, "asyncio") as first:
        first.kill(signal.SIGTERM)
    with sqlite3.connect(tmp_path / "logatron.sqlite3") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    refused_with(run_serve("--data-dir", str(tmp_path)), "newer logatron (format 99")


def test_a_corrupt_data_dir_is_refused_not_started_empty(tmp_path: Path) -> None:
    (tmp_path / "logatron.sqlite3").write_bytes(b"this is not a database" * 100)
    refused_with(run_serve("--data-dir", str(tmp_path)), "unreadable")
    assert (tmp_path / "logatron.sqlite3").read_bytes() == b"this is not a database" * 100


@pytest.mark.anyio
async def test_a_full_disk_holds_pongs_and_recovers_by_itself(tmp_path: Path) -> None:
    durable = DurableStore.open(tmp_path, {}, flush_interval=0.05, max_pages=8)
    server = LogatronServer(port=0, registry=durable.registry, store_driver=durable)
    http = HttpServer(durable.registry, port=0, store_health=lambda: durable.health)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(durable.run)
            await tg.start(server.serve)
            await tg.start(http.serve)
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            async with stream:
                await stream.send(b"IAM big\n" + b"LOG " + b"x" * 60_000 + b"\n" + b"PING 1\n")
                await until(lambda: durable.health.failing, within=TIMEOUT)
                status, health = await get_json(http.port, "/healthz")
                assert status == 503 and health["store"] == "failing" and "full" in health["error"]
                with anyio.move_on_after(0.3):
                    await stream.receive()
                    raise AssertionError("a PONG for lines that are not on disk")
                durable.set_max_pages(1_000_000)  # space comes back
                with anyio.fail_after(TIMEOUT):
                    assert await stream.receive() == b"PONG 1\n"
            assert not durable.health.failing and durable.health.failed_flushes >= 1
            assert await get_json(http.port, "/healthz") == (200, {"status": "ok", "store": "ok"})
            _, _, body = await get(http.port, "/metrics")
            metrics = body.decode()
            assert "logatron_store_failed_flushes_total " in metrics
            assert "logatron_store_failing 0" in metrics
            tg.cancel_scope.cancel()
    finally:
        await durable.flush()
        durable.close()
    again = DurableStore.open(tmp_path, {})
    try:
        assert again.registry.log("big")[0].message == "x" * 60_000
    finally:
        again.close()


@pytest.mark.anyio
async def test_seqs_reserved_on_disk_run_ahead_of_those_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any PING, a write is made once half the reserved seqs are used, so the seqs
    on disk always cover those handed out (what a crash restarts above)."""
    monkeypatch.setattr(_durable, "SEQ_RESERVE", 8)
    durable = DurableStore.open(tmp_path, {}, flush_interval=60)
    database = tmp_path / "logatron.sqlite3"

    def reserved() -> int:
        with sqlite3.connect(database) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'reserved_seq'").fetchone()
            return int(row[0])

    def renewed_past(seq: int) -> Callable[[], bool]:
        return lambda: reserved() - 4 >= seq

    try:
        assert reserved() == 8
        async with anyio.create_task_group() as tg:
            await tg.start(durable.run)
            session = Session(durable.registry)
            session.receive_data(b"IAM w\n", time.time())
            for n in range(1, 41):
                session.receive_data(b"LOG line\n", time.time())
                assert reserved() >= n  # never behind what readers may have seen
                if n > reserved() - 4:  # half used: a write is on its way
                    await until(renewed_past(n), within=TIMEOUT)
            tg.cancel_scope.cancel()
    finally:
        await durable.flush()
        durable.close()
    again = DurableStore.open(tmp_path, {})
    try:
        assert again.registry.last_seq == 40  # a clean close: no seq skipped
        assert again.registry.snapshot(0).missed == 0
    finally:
        again.close()
