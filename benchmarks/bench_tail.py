"""WebSocket tail under load: ingest beside stalled tails, one live tail's rate, tail latency.

The server (a ``LogatronServer`` and an ``HttpServer`` sharing one ``Registry``, on asyncio or
trio) runs in its own process: this script with ``--serve``, which prints its two ports and, on
SIGTERM, one JSON line of counters. Load generators and subscribers run in other processes
(this script with ``--generate``, ``--pace``, ``--stall`` or ``--subscribe``). Three
measurements, each on a fresh server per repeat:

1. ingest: 4 TCP clients each send IAM, N 64-byte LOG lines, PING and wait for PONG (as in
   bench_server.py), with no tail and with 10 tails that finish the WebSocket handshake and
   then never read their socket. Lines/s of both and their ratio (target: at least 0.9); the
   same per second of the server's CPU (steadier on a shared machine), and the server CPU
   one stalled tail costs (a fixed cost: the ratio depends on N through it).
2. live: one tail reading as fast as it can while the 4 clients flood for a fixed time; the
   rate of ``log`` messages it receives, from its first to its last (target: 100,000/s).
3. latency: one client paces LOG lines at 10,000/s, each carrying its send time
   (``time.time()``, the same clock in every process on one machine); one tail notes the
   arrival time of each (right after the ``recv`` that brought it). p50/p99/max in ms from
   the server's receipt (the entry's ``timestamp``, taken as the TCP read returns; target: p99
   under 50 ms), and from the send.

Subscribers do the handshake with wsproto and decode the server's frames with a small decoder
of their own (``--decoder raw``, the default: ~1 us a frame) or with wsproto (``--decoder
wsproto``: ~7.5 us a frame, enough to make the subscriber the bottleneck of measurement 2).
Prints progress on stderr and, as its last stdout line, one JSON object with the medians.

    python benchmarks/bench_tail.py [--quick] [--backends asyncio,trio] [--only ingest,live,latency]
    python benchmarks/bench_tail.py --profile ingest --backends asyncio   # cProfile of the server
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import queue
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

CLIENTS = 4
LINE_BYTES = 64
SEND_CHUNK_LINES = 16 * 1024  # 1 MiB of 64-byte lines per sendall
STALLED_TAILS = 10
LATENCY_RATE = 10_000  # lines/s
PACE_TICK_SECONDS = 0.0005

# Targets (the issue's).
TARGET_INGEST_RATIO = 0.9
TARGET_LIVE_EVENTS_PER_S = 100_000
TARGET_P99_MS = 50.0

# Every wait is bounded: startup of a child, a whole run, a server's lifetime.
STARTUP_TIMEOUT = 30.0
RUN_TIMEOUT = 120.0
SERVE_MAX_SECONDS = 600.0
STOP_TIMEOUT = 10.0
# A subscriber stops once no data came for this long after its first log message.
IDLE_SECONDS = 1.0
RECEIVE_BYTES = 256 * 1024

LOG_PREFIX = b'{"type": "log"'

_Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# The server process: python bench_tail.py --serve --backend B [--profile-out PATH]


def serve(backend: str, profile_to: str | None) -> None:
    """Run both servers on one registry until SIGTERM (or SERVE_MAX_SECONDS)."""
    import anyio

    from logatron_anyio import HttpServer, LogatronServer
    from logatron_core import Registry

    async def main() -> None:
        registry = Registry()
        tcp = LogatronServer("127.0.0.1", 0, registry=registry)
        http = HttpServer(registry, "127.0.0.1", 0)
        async with anyio.create_task_group() as tg:
            await tg.start(tcp.serve)
            await tg.start(http.serve)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                print(f"PORTS {tcp.port} {http.port} {time.process_time():.3f}", flush=True)
                with anyio.move_on_after(SERVE_MAX_SECONDS):
                    async for _ in signals:
                        break
            stats = registry.stats
            counters = {
                "lines_received": stats.lines_received,
                "tail_lagged_lines": http.tail_options.lagged_total,
                "tail_subscribers": http.tail_options.subscribers,
                "replies_dropped": stats.replies_dropped,
                "cpu_seconds": round(time.process_time(), 3),
            }
            print(json.dumps(counters), flush=True)
            tg.cancel_scope.cancel()

    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
        profiler.enable()
    try:
        anyio.run(main, backend=backend)
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)


# --------------------------------------------------------------------------------------------
# Load generators: --generate (flood, 4 clients) and --pace (one client at a fixed rate)


def make_chunk() -> bytes:
    """SEND_CHUNK_LINES LOG lines of exactly 64 bytes (fixed content: runs are comparable)."""
    body = b"LOG worker-7 handled request 4711 in 12.5 ms status=200 path=/api/v1"
    line = body[: LINE_BYTES - 1] + b"\n"
    assert len(line) == LINE_BYTES
    return line * SEND_CHUNK_LINES


def read_reply(sock: socket.socket) -> bytes:
    reply = b""
    for _ in range(1000):
        if reply.endswith(b"\n"):
            return reply
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("the server closed the connection")
        reply += data
    raise RuntimeError(f"no reply line: {reply[:100]!r}")


def flood_client(
    index: int,
    port: int,
    lines: int | None,
    seconds: float | None,
    start: threading.Barrier,
    out: list[tuple[float, int]],
) -> None:
    """One client: IAM, then ``lines`` lines (or as many as fit in ``seconds``), PING, PONG."""
    chunk = make_chunk()
    view = memoryview(chunk)
    with socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start.wait(STARTUP_TIMEOUT)
        sock.sendall(b"IAM bench-%d\n" % index)
        sent = 0
        began = time.perf_counter()
        limit = lines if lines is not None else 10**10
        while sent < limit:
            if seconds is not None and time.perf_counter() - began >= seconds:
                break
            count = min(SEND_CHUNK_LINES, limit - sent)
            sock.sendall(view[: count * LINE_BYTES])
            sent += count
        sock.sendall(b"PING done\n")
        reply = read_reply(sock)
        if reply != b"PONG done\n":
            raise RuntimeError(f"unexpected reply {reply!r}")
        out.append((time.perf_counter(), sent))


def generate(port: int, lines: int | None, seconds: float | None) -> None:
    """CLIENTS threads flood the server; prints {"lines", "seconds"} (first byte to last PONG)."""
    start = threading.Barrier(CLIENTS + 1)
    finished: list[tuple[float, int]] = []
    threads = [
        threading.Thread(
            target=flood_client, args=(index, port, lines, seconds, start, finished), daemon=True
        )
        for index in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    start.wait(STARTUP_TIMEOUT)
    began = time.perf_counter()
    for thread in threads:
        thread.join(RUN_TIMEOUT)
    if len(finished) != CLIENTS:
        raise SystemExit("a client failed")
    elapsed = max(end for end, _ in finished) - began
    total = sum(sent for _, sent in finished)
    print(json.dumps({"lines": total, "seconds": elapsed}), flush=True)


def pace(port: int, rate: int, seconds: float) -> None:
    """One client sends rate*seconds lines at ``rate``/s, each "<i> <time.time()>" padded."""
    total = round(rate * seconds)
    with socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"IAM latency\n")
        sent = 0
        began = time.perf_counter()
        deadline = began + seconds + RUN_TIMEOUT
        while sent < total and time.perf_counter() < deadline:
            due = min(total, int((time.perf_counter() - began) * rate) + 1)
            if due > sent:
                now = b"%.6f" % time.time()
                batch = []
                for i in range(sent, due):
                    line = b"LOG %d %s " % (i, now)
                    batch.append(line.ljust(LINE_BYTES - 1, b"x") + b"\n")
                sock.sendall(b"".join(batch))
                sent = due
            time.sleep(PACE_TICK_SECONDS)
        elapsed = time.perf_counter() - began
        sock.sendall(b"PING done\n")
        read_reply(sock)
    print(json.dumps({"lines": sent, "seconds": elapsed}), flush=True)


# --------------------------------------------------------------------------------------------
# Subscribers: --stall (N tails that never read) and --subscribe (one tail, rate or latency)


def open_tail(port: int) -> tuple[socket.socket, Any, bytes]:
    """A WebSocket to /api/tail after a wsproto handshake: (socket, WSConnection, the bytes
    received after the handshake response)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    sock = socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/api/tail")))
    received = b""
    for _ in range(1000):
        data = sock.recv(RECEIVE_BYTES)
        if not data:
            raise RuntimeError("the server closed the connection during the handshake")
        received += data
        head, found, rest = received.partition(b"\r\n\r\n")
        if found:
            # Only the HTTP response goes through wsproto: the frames after it are ours.
            ws.receive_data(head + found)
            events = list(ws.events())
            if not events or not isinstance(events[0], AcceptConnection):
                raise RuntimeError(f"handshake refused: {events!r}")
            return sock, ws, rest
    raise RuntimeError("no handshake response")


def stall(port: int, count: int) -> None:
    """Open ``count`` tails, print "ready", never read them; exit when stdin closes."""
    tails = [open_tail(port) for _ in range(count)]
    print("ready", flush=True)
    deadline = time.monotonic() + SERVE_MAX_SECONDS
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sys.stdin], [], [], 1.0)
        if readable and not sys.stdin.readline():
            break
    for sock, _, _ in tails:
        sock.close()


class RawFrames:
    """Server-to-client frames (unmasked, no extension): (first byte, payload) per frame."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buffer + data if self.buffer else data
        frames: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            size = buf[pos + 1]
            if size & 0x80:
                raise RuntimeError("a masked frame from the server")
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + size:
                break
            frames.append((buf[pos], buf[pos + head : pos + head + size]))
            pos += head + size
        self.buffer = buf[pos:]
        return frames


class WsprotoFrames:
    """The same as RawFrames, through wsproto (slower: its per-frame cost is ~7 us)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.parts: list[str] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        from wsproto.events import CloseConnection, Ping, TextMessage

        self.ws.receive_data(data)
        frames: list[tuple[int, bytes]] = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    frames.append((0x81, "".join(self.parts).encode()))
                    self.parts.clear()
            elif isinstance(event, Ping):
                frames.append((0x89, bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                frames.append((0x88, b""))
        return frames


def subscribe(port: int, mode: str, decoder: str, expect: int) -> None:
    """One tail read as fast as possible. Prints "ready" once ``current`` arrived, then (when
    ``expect`` log messages came, or after IDLE_SECONDS without data) one JSON line: the log
    messages counted, lagged lines, the span first..last log message, and in latency mode the
    per-message latencies' percentiles."""
    from wsproto.events import Pong

    sock, ws, pending = open_tail(port)
    frames_of: RawFrames | WsprotoFrames = RawFrames() if decoder == "raw" else WsprotoFrames(ws)
    latencies: list[float] = []  # from the server's receipt (the entry's timestamp)
    end_to_end: list[float] = []  # from the sender's send
    logs = missed = other = 0
    first = last = 0.0
    ready = False
    cpu_began = time.process_time()
    deadline = time.monotonic() + RUN_TIMEOUT
    data = pending
    while time.monotonic() < deadline:
        if data:
            now = time.time()
            for opcode, payload in frames_of.feed(data):
                if opcode == 0x81:
                    if mode == "rate" and payload.startswith(LOG_PREFIX):
                        logs += 1
                        last = now
                        if logs == 1:
                            first = now
                        continue
                    message = json.loads(payload)
                    kind = message.get("type")
                    if kind == "log":
                        logs += 1
                        last = now
                        if logs == 1:
                            first = now
                        if mode == "latency":
                            latencies.append(now - float(message["timestamp"]))
                            sent_at = float(message["message"].split()[1])
                            end_to_end.append(now - sent_at)
                    elif kind == "lagged":
                        missed += int(message["missed"])
                    elif kind == "current" and not ready:
                        ready = True
                        print("ready", flush=True)
                    else:
                        other += 1
                elif opcode == 0x89:
                    sock.sendall(ws.send(Pong(payload)))
                elif opcode == 0x88:
                    deadline = 0.0
                    break
                else:
                    raise RuntimeError(f"unexpected frame 0x{opcode:02x}")
        if expect and logs + missed >= expect:
            break
        sock.settimeout(IDLE_SECONDS if logs else RUN_TIMEOUT)
        try:
            data = sock.recv(RECEIVE_BYTES)
        except TimeoutError:
            break
        if not data:
            break
    cpu = time.process_time() - cpu_began
    sock.close()
    result: _Json = {
        "logs": logs,
        "missed": missed,
        "other": other,
        "span": last - first,
        "cpu_seconds": round(cpu, 3),
    }
    for prefix, measured in (("", latencies), ("send_", end_to_end)):
        if measured:
            measured.sort()
            result[f"{prefix}p50_ms"] = 1000 * percentile(measured, 0.50)
            result[f"{prefix}p99_ms"] = 1000 * percentile(measured, 0.99)
            result[f"{prefix}max_ms"] = 1000 * measured[-1]
    print(json.dumps(result), flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------------
# The orchestrator


class Child:
    """A child process of this script, its stdout read line by line by a thread."""

    def __init__(self, *args: str, profile_to: str | None = None) -> None:
        command = [sys.executable, os.path.abspath(__file__), *args]
        if profile_to:
            command += ["--profile-out", profile_to]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for line in stdout:
            self.lines.put(line.decode().rstrip("\n"))
        self.lines.put("")  # EOF

    def line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no output from {self.process.args!r}") from None
        if not line:
            raise RuntimeError(f"{self.process.args!r} ended early")
        return line

    def json(self, timeout: float) -> _Json:
        result = json.loads(self.line(timeout))
        assert isinstance(result, dict)
        return result

    def stop(self) -> None:
        """Close stdin, SIGTERM, then SIGKILL: the process is gone when this returns."""
        process = self.process
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


class Server(Child):
    def __init__(self, backend: str, profile_to: str | None = None) -> None:
        super().__init__("--serve", "--backend", backend, profile_to=profile_to)
        words = self.line(STARTUP_TIMEOUT).split()
        if len(words) != 4 or words[0] != "PORTS":
            raise RuntimeError(f"unexpected startup line {words!r}")
        self.tcp_port, self.http_port = int(words[1]), int(words[2])
        self.startup_cpu = float(words[3])

    def finish(self) -> _Json:
        """SIGTERM: the server prints its counters and ends (writing its profile).
        ``cpu_seconds`` is then the CPU time it used since it started listening."""
        self.process.send_signal(signal.SIGTERM)
        counters = self.json(STOP_TIMEOUT)
        counters["cpu_seconds"] = float(counters["cpu_seconds"]) - self.startup_cpu
        self.process.wait(STOP_TIMEOUT)
        return counters


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child appended to the list is stopped on the way out, whatever happens."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def run_child(*args: str) -> _Json:
    """Run this script with ``args`` to its end; its last stdout line (JSON)."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        stdout=subprocess.PIPE,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    parsed = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert isinstance(parsed, dict)
    return parsed


def run_ingest(backend: str, lines: int, stalled: int, profile_to: str | None = None) -> _Json:
    """Lines/s of the 4-client flood with ``stalled`` tails that never read."""
    with children() as started:
        server = Server(backend, profile_to)
        started.append(server)
        if stalled:
            stall_child = Child("--stall", str(server.http_port), "--count", str(stalled))
            started.append(stall_child)
            if stall_child.line(STARTUP_TIMEOUT) != "ready":
                raise RuntimeError("the stalled tails did not open")
        measured = run_child("--generate", str(server.tcp_port), "--lines", str(lines))
        if stalled:
            # Closed first, their tails end at once instead of in the server's close grace.
            started.pop().stop()
        counters = server.finish()
    total = int(measured["lines"])
    if counters["lines_received"] != total:
        raise RuntimeError(f"sent {total} lines, the server stored {counters['lines_received']}")
    # Every tail was offered every line: what it did not drop it framed or still holds queued
    # (at most DEFAULT_TAIL_QUEUE_LINES, 10,000).
    kept = stalled * total - int(counters["tail_lagged_lines"])
    cpu = float(counters["cpu_seconds"])
    return {
        "lines_per_s": total / float(measured["seconds"]),
        "lines_per_cpu_s": total / cpu,
        "tail_lines_kept": kept,
        "server_cpu_seconds": cpu,
    }


def run_live(backend: str, seconds: float, decoder: str, profile_to: str | None = None) -> _Json:
    """Log messages/s one tail receives while 4 clients flood for ``seconds``."""
    with children() as started:
        server = Server(backend, profile_to)
        started.append(server)
        tail = Child("--subscribe", str(server.http_port), "--mode", "rate", "--decoder", decoder)
        started.append(tail)
        if tail.line(STARTUP_TIMEOUT) != "ready":
            raise RuntimeError("the tail did not open")
        measured = run_child("--generate", str(server.tcp_port), "--seconds", str(seconds))
        received = tail.json(RUN_TIMEOUT)
        counters = server.finish()
    span = float(received["span"])
    return {
        "events_per_s": received["logs"] / span if span > 0 else 0.0,
        "received": received["logs"],
        "lagged": received["missed"],
        "ingested": measured["lines"],
        "ingest_lines_per_s": float(measured["lines"]) / float(measured["seconds"]),
        "subscriber_cpu_share": float(received["cpu_seconds"]) / span if span > 0 else 0.0,
        "server_cpu_share": float(counters["cpu_seconds"]) / float(measured["seconds"]),
    }


def run_latency(backend: str, seconds: float, decoder: str, profile_to: str | None = None) -> _Json:
    """Receipt-to-delivery latency of lines paced at LATENCY_RATE."""
    expect = round(LATENCY_RATE * seconds)
    with children() as started:
        server = Server(backend, profile_to)
        started.append(server)
        tail = Child(
            "--subscribe",
            str(server.http_port),
            "--mode",
            "latency",
            "--decoder",
            decoder,
            "--expect",
            str(expect),
        )
        started.append(tail)
        if tail.line(STARTUP_TIMEOUT) != "ready":
            raise RuntimeError("the tail did not open")
        sent = run_child(
            "--pace", str(server.tcp_port), "--rate", str(LATENCY_RATE), "--seconds", str(seconds)
        )
        received = tail.json(RUN_TIMEOUT)
        server.finish()
    return {
        "p50_ms": received["p50_ms"],
        "p99_ms": received["p99_ms"],
        "max_ms": received["max_ms"],
        "send_p50_ms": received["send_p50_ms"],
        "send_p99_ms": received["send_p99_ms"],
        "send_max_ms": received["send_max_ms"],
        "received": received["logs"],
        "lagged": received["missed"],
        "sent_lines_per_s": float(sent["lines"]) / float(sent["seconds"]),
    }


def median(runs: list[_Json], key: str) -> float:
    return float(statistics.median(float(run[key]) for run in runs))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> None:
    quick = args.quick
    lines = args.lines or (250_000 if quick else 1_000_000)
    flood_seconds = 1.5 if quick else 5.0
    latency_seconds = 2.0 if quick else 10.0
    ingest_repeats = args.repeats or (3 if quick else 5)
    other_repeats = args.repeats or (1 if quick else 3)
    only = set(args.only.split(","))
    summary: _Json = {}
    for backend in [name for name in args.backends.split(",") if name]:
        if "ingest" in only:
            plain: list[_Json] = []
            stalled: list[_Json] = []
            for repeat in range(1, ingest_repeats + 1):
                # Alternate, so a drift of the machine hits both sides alike.
                for runs, count in ((plain, 0), (stalled, STALLED_TAILS)):
                    runs.append(run_ingest(backend, lines, count))
                    log(
                        f"{backend} ingest, {count} stalled tails, {repeat}/{ingest_repeats}: "
                        f"{runs[-1]['lines_per_s']:,.0f} lines/s "
                        f"(server cpu {runs[-1]['server_cpu_seconds']:.3f} s, "
                        f"stalled tails kept {runs[-1]['tail_lines_kept']:,} lines)"
                    )
            base = median(plain, "lines_per_s")
            with_tails = median(stalled, "lines_per_s")
            summary[f"{backend}_ingest_lines_per_s"] = round(base)
            summary[f"{backend}_ingest_stalled_lines_per_s"] = round(with_tails)
            summary[f"{backend}_ingest_ratio"] = round(with_tails / base, 3)
            # The same per server CPU second: steadier when other processes share the machine.
            base_cpu = median(plain, "lines_per_cpu_s")
            with_tails_cpu = median(stalled, "lines_per_cpu_s")
            summary[f"{backend}_ingest_lines_per_cpu_s"] = round(base_cpu)
            summary[f"{backend}_ingest_stalled_lines_per_cpu_s"] = round(with_tails_cpu)
            summary[f"{backend}_ingest_cpu_ratio"] = round(with_tails_cpu / base_cpu, 3)
            summary[f"{backend}_stalled_tail_lines_kept"] = round(
                median(stalled, "tail_lines_kept")
            )
            # What one stalled tail costs the server, whatever the length of the run.
            extra = median(stalled, "server_cpu_seconds") - median(plain, "server_cpu_seconds")
            summary[f"{backend}_cpu_ms_per_stalled_tail"] = round(1000 * extra / STALLED_TAILS, 1)
        if "live" in only:
            live = []
            for repeat in range(1, other_repeats + 1):
                live.append(run_live(backend, flood_seconds, args.decoder))
                one = live[-1]
                log(
                    f"{backend} live tail {repeat}/{other_repeats}: "
                    f"{one['events_per_s']:,.0f} events/s received "
                    f"({one['received']:,} received, {one['lagged']:,} lagged, "
                    f"ingest {one['ingest_lines_per_s']:,.0f} lines/s, "
                    f"server cpu {one['server_cpu_share']:.0%} of the flood's time, "
                    f"subscriber cpu {one['subscriber_cpu_share']:.0%} of its span)"
                )
            summary[f"{backend}_live_events_per_s"] = round(median(live, "events_per_s"))
            summary[f"{backend}_live_ingest_lines_per_s"] = round(
                median(live, "ingest_lines_per_s")
            )
            summary[f"{backend}_live_subscriber_cpu_share"] = round(
                median(live, "subscriber_cpu_share"), 2
            )
        if "latency" in only:
            latency = []
            for repeat in range(1, other_repeats + 1):
                latency.append(run_latency(backend, latency_seconds, args.decoder))
                one = latency[-1]
                log(
                    f"{backend} latency {repeat}/{other_repeats}: p50 {one['p50_ms']:.2f} ms, "
                    f"p99 {one['p99_ms']:.2f} ms, max {one['max_ms']:.2f} ms from receipt; "
                    f"p50 {one['send_p50_ms']:.2f} ms, p99 {one['send_p99_ms']:.2f} ms, "
                    f"max {one['send_max_ms']:.2f} ms from send "
                    f"({one['received']:,} received, {one['lagged']:,} lagged)"
                )
            for key in ("p50_ms", "p99_ms", "max_ms", "send_p50_ms", "send_p99_ms", "send_max_ms"):
                summary[f"{backend}_latency_{key}"] = round(median(latency, key), 3)
    summary.update(
        clients=CLIENTS,
        lines_per_client=lines,
        line_bytes=LINE_BYTES,
        stalled_tails=STALLED_TAILS,
        flood_seconds=flood_seconds,
        latency_rate=LATENCY_RATE,
        latency_seconds=latency_seconds,
        ingest_repeats=ingest_repeats,
        repeats=other_repeats,
        decoder=args.decoder,
        cpus=os.cpu_count(),
        load_average=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
    )
    print(json.dumps(summary))


def profile(args: argparse.Namespace) -> None:
    """One run of a measurement with the server under cProfile; the top functions on stderr."""
    backend = args.backends.split(",")[0]
    lines = args.lines or 1_000_000
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "server.prof")
        if args.profile == "ingest":
            result = run_ingest(backend, lines, STALLED_TAILS, path)
        elif args.profile == "ingest0":
            result = run_ingest(backend, lines, 0, path)
        elif args.profile == "live":
            result = run_live(backend, 5.0, args.decoder, path)
        else:
            result = run_latency(backend, 10.0, args.decoder, path)
        log(f"{args.profile} on {backend} under cProfile: {result}")
        if args.profile_save:
            with open(path, "rb") as source, open(args.profile_save, "wb") as target:
                target.write(source.read())
        stats = pstats.Stats(path, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 60 s)")
    parser.add_argument("--backends", default="asyncio,trio", help="asyncio,trio")
    parser.add_argument("--only", default="ingest,live,latency", help="ingest,live,latency")
    parser.add_argument("--repeats", type=int, default=0, help="repeats of every measurement")
    parser.add_argument("--lines", type=int, default=0, help="ingest: lines per client")
    parser.add_argument("--decoder", choices=("raw", "wsproto"), default="raw")
    parser.add_argument(
        "--profile",
        choices=("ingest", "ingest0", "live", "latency"),
        help="one run with the server under cProfile (ingest0: without tails)",
    )
    parser.add_argument("--profile-save", metavar="PATH", help="keep the profile there")
    # The children's entry points.
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=LATENCY_RATE, help=argparse.SUPPRESS)
    parser.add_argument("--stall", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=STALLED_TAILS, help=argparse.SUPPRESS)
    parser.add_argument("--subscribe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("rate", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.backend, args.profile_out)
    elif args.generate is not None:
        generate(args.generate, args.lines or None, args.seconds)
    elif args.pace is not None:
        pace(args.pace, args.rate, args.seconds or 1.0)
    elif args.stall is not None:
        stall(args.stall, args.count)
    elif args.subscribe is not None:
        subscribe(args.subscribe, args.mode or "rate", args.decoder, args.expect)
    elif args.profile:
        profile(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
