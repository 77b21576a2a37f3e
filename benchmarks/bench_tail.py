"""WebSocket tail under load: ingest beside stalled or filtered tails, live rate, latency.

The server (``python -m logatron_anyio serve`` with TCP and HTTP on free ports, on asyncio or
trio) runs in its own process, fresh for every repeat; its counters come from ``/metrics`` and
its CPU time from ``/proc`` (``harness.Server``). Load generators and subscribers run in other
processes (``harness.flood_command``, and this script with ``--pace``, ``--stall``,
``--subscribe`` or ``--drain``). Four measurements:

1. ingest: 4 TCP clients each send IAM, N 64-byte LOG lines, PING and wait for PONG (as in
   bench_server.py), with no tail and with 10 tails that finish the WebSocket handshake and
   then never read their socket. Lines/s of both and their ratio (target: at least 0.9); the
   same per second of the server's CPU (steadier on a shared machine), and the server CPU
   one stalled tail costs (a fixed cost: the ratio depends on N through it).
2. live: one tail reading as fast as it can while the 4 clients flood for a fixed time; the
   rate of ``log`` messages it receives, from its first to its last (target: 100,000/s).
3. filter: the 4-client flood of N lines beside one tail that reads as fast as it can:
   unfiltered, with ``include=status=5\\d\\d`` (matches no line: the usual "show me the
   errors") and with ``include=status=200`` (matches every line), the three in turn in every
   repeat (and with no tail, for reference). Ingest lines/s of each, and the median of each
   repeat's filtered over unfiltered (target: at least 0.85).
4. latency: one client paces LOG lines at 10,000/s, each carrying its send time
   (``time.time()``, the same clock in every process on one machine); one tail notes the
   arrival time of each (right after the ``recv`` that brought it). p50/p99/max in ms from
   the server's receipt (the entry's ``timestamp``, taken as the TCP read returns; target: p99
   under 50 ms), and from the send.

Subscribers do the handshake with wsproto and decode the server's frames with a small decoder
of their own (``--decoder raw``, the default: ~1 us a frame) or with wsproto (``--decoder
wsproto``: ~7.5 us a frame, enough to make the subscriber the bottleneck of measurement 2).
Prints progress on stderr and, as its last stdout line, one JSON object with the medians.
``--compare SRC`` measures another tree in the same run, repeats interleaved.

    python benchmarks/bench_tail.py [--quick] [--backends asyncio,trio]
        [--only ingest,live,filter,latency]
    python benchmarks/bench_tail.py --only ingest --compare /work/before/src
    python benchmarks/bench_tail.py --profile ingest --backends asyncio   # cProfile of the server
"""

from __future__ import annotations

import argparse
import functools
import json
import select
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import harness
from harness import RUN_TIMEOUT, STARTUP_TIMEOUT, Json

STALLED_TAILS = 10
# The tails of the filter measurement: (label, query; None: no tail). The flood's line holds
# "status=200". Ratios are over "unfiltered" (the first).
FILTER_TAILS: tuple[tuple[str, str | None], ...] = (
    ("unfiltered", ""),
    ("none", None),
    ("rare", "include=status%3D5%5Cd%5Cd"),  # matches no line
    ("every", "include=status%3D200"),  # matches every line
)
LATENCY_RATE = 10_000  # lines/s
PACE_TICK_SECONDS = 0.0005

# Targets (the issues').
TARGET_INGEST_RATIO = 0.9
TARGET_FILTER_RATIO = 0.85
TARGET_LIVE_EVENTS_PER_S = 100_000
TARGET_P99_MS = 50.0

# How long the stalled tails stay open at most.
STALL_MAX_SECONDS = 600.0
# A subscriber stops once no data came for this long after its first log message.
IDLE_SECONDS = 1.0
RECEIVE_BYTES = 256 * 1024

# How every tail ``log`` message starts: compact JSON, "type" first (``run_payloads`` in
# ``logatron_anyio/_api.py``; since 45acc08), or with spaces (``json.dumps``' default) in older
# trees, for ``--compare``. A rate-mode subscriber counts the log messages it recognised by this
# prefix alone (the fast path: no ``json.loads``), and ``run_live`` fails unless that is all of
# them: from 45acc08 until this check, the prefix had spaces and never matched.
LOG_PREFIXES = (b'{"type":"log",', b'{"type": "log",')


# --------------------------------------------------------------------------------------------
# Load generator: --pace (one client at a fixed rate; the flood is harness.flood_command)


def pace(port: int, rate: int, seconds: float) -> None:
    """One client sends rate*seconds lines at ``rate``/s, each "<i> <time.time()>" padded."""
    total = round(rate * seconds)
    with socket.create_connection((harness.HOST, port), timeout=RUN_TIMEOUT) as sock:
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
                    batch.append(line.ljust(harness.LINE_BYTES - 1, b"x") + b"\n")
                sock.sendall(b"".join(batch))
                sent = due
            time.sleep(PACE_TICK_SECONDS)
        elapsed = time.perf_counter() - began
        sock.sendall(b"PING done\n")
        harness.read_reply(sock)
    print(json.dumps({"lines": sent, "seconds": elapsed}), flush=True)


# --------------------------------------------------------------------------------------------
# Subscribers: --stall (N tails that never read) and --subscribe (one tail, rate or latency)


def open_tail(port: int, query: str = "") -> tuple[socket.socket, Any, bytes]:
    """A WebSocket to /api/tail?<query> after a wsproto handshake: (socket, WSConnection, the
    bytes received after the handshake response)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    sock = socket.create_connection((harness.HOST, port), timeout=STARTUP_TIMEOUT)
    ws = WSConnection(ConnectionType.CLIENT)
    target = "/api/tail" + (f"?{query}" if query else "")
    sock.sendall(ws.send(Request(host=f"{harness.HOST}:{port}", target=target)))
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
    deadline = time.monotonic() + STALL_MAX_SECONDS
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sys.stdin], [], [], 1.0)
        if readable and not sys.stdin.readline():
            break
    for sock, _, _ in tails:
        sock.close()


def drain(port: int, query: str) -> None:
    """One tail (``/api/tail?<query>``) read as fast as it can: prints "ready" once ``current``
    arrived, then, when stdin closes, one JSON line: the log messages and lagged lines."""
    from wsproto.events import Pong

    sock, ws, data = open_tail(port, query)
    frames = RawFrames()
    logs = missed = 0
    ready = False
    deadline = time.monotonic() + STALL_MAX_SECONDS
    while time.monotonic() < deadline:
        for opcode, payload in frames.feed(data):
            if opcode == 0x81 and payload.startswith(LOG_PREFIXES):
                logs += 1
            elif opcode == 0x81:
                message = json.loads(payload)
                if message["type"] == "lagged":
                    missed += int(message["missed"])
                elif message["type"] == "current" and not ready:
                    ready = True
                    print("ready", flush=True)
            elif opcode == 0x89:
                sock.sendall(ws.send(Pong(payload)))
        readable, _, _ = select.select([sock, sys.stdin], [], [], 1.0)
        if sys.stdin in readable and not sys.stdin.readline():
            break
        data = sock.recv(RECEIVE_BYTES) if sock in readable else b""
        if sock in readable and not data:
            break
    sock.close()
    print(json.dumps({"logs": logs, "missed": missed}), flush=True)


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
    messages counted (``fast_path``: how many of them by LOG_PREFIXES alone), lagged lines, the
    span first..last log message, and in latency mode the per-message latencies' percentiles."""
    from wsproto.events import Pong

    sock, ws, pending = open_tail(port)
    frames_of: RawFrames | WsprotoFrames = RawFrames() if decoder == "raw" else WsprotoFrames(ws)
    latencies: list[float] = []  # from the server's receipt (the entry's timestamp)
    end_to_end: list[float] = []  # from the sender's send
    logs = fast = missed = other = 0
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
                    if mode == "rate" and payload.startswith(LOG_PREFIXES):
                        fast += 1
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
    result: Json = {
        "logs": logs,
        "fast_path": fast,
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


# --------------------------------------------------------------------------------------------
# The orchestrator


def script(*args: str) -> list[str]:
    """The command of one of this script's children."""
    return harness.script_command(__file__, *args)


def ready_child(started: list[harness.Child], *args: str) -> harness.Child:
    """This script with ``args`` in a child (added to ``started``) once it printed "ready"."""
    child = harness.Child(script(*args))
    started.append(child)
    if child.line(STARTUP_TIMEOUT) != "ready":
        raise child.failure("did not print ready")
    return child


def server_counters(server: harness.Server) -> Json:
    """The CPU seconds ``server`` used since it listened (read first), and its counters."""
    cpu = server.cpu_seconds()
    samples = server.metrics()
    return {
        "cpu_seconds": cpu,
        "lines_received": int(samples["logatron_lines_received_total"]),
        "tail_lagged_lines": int(samples["logatron_tail_lagged_events_total"]),
    }


def run_ingest(
    tree: harness.Tree, backend: str, lines: int, stalled: int, profile_to: str | None = None
) -> Json:
    """Lines/s of the 4-client flood with ``stalled`` tails that never read."""
    with harness.children() as started:
        server = harness.Server(backend, tree, with_http=True, profile_to=profile_to)
        started.append(server)
        if stalled:
            ready_child(started, "--stall", str(server.http_port), "--count", str(stalled))
        measured = harness.run_json(harness.flood_command(server.tcp_port, lines=lines))
        if stalled:
            # Closed first, their tails end at once instead of in the server's close grace.
            started.pop().stop()
        counters = server_counters(server)
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


def run_live(
    tree: harness.Tree, backend: str, seconds: float, decoder: str, profile_to: str | None = None
) -> Json:
    """Log messages/s one tail receives while 4 clients flood for ``seconds``."""
    with harness.children() as started:
        server = harness.Server(backend, tree, with_http=True, profile_to=profile_to)
        started.append(server)
        tail = ready_child(
            started, "--subscribe", str(server.http_port), "--mode", "rate", "--decoder", decoder
        )
        measured = harness.run_json(harness.flood_command(server.tcp_port, seconds=seconds))
        received = tail.json(RUN_TIMEOUT)
        counters = server_counters(server)
    if received["fast_path"] != received["logs"]:
        raise RuntimeError(
            f"only {received['fast_path']:,} of {received['logs']:,} log messages matched "
            f"LOG_PREFIXES {LOG_PREFIXES!r}: the tail's JSON changed shape"
        )
    span = float(received["span"])
    return {
        "events_per_s": received["logs"] / span if span > 0 else 0.0,
        "received": received["logs"],
        "fast_path": received["fast_path"],
        "lagged": received["missed"],
        "ingested": measured["lines"],
        "ingest_lines_per_s": float(measured["lines"]) / float(measured["seconds"]),
        "subscriber_cpu_share": float(received["cpu_seconds"]) / span if span > 0 else 0.0,
        "server_cpu_share": float(counters["cpu_seconds"]) / float(measured["seconds"]),
    }


def run_latency(
    tree: harness.Tree, backend: str, seconds: float, decoder: str, profile_to: str | None = None
) -> Json:
    """Receipt-to-delivery latency of lines paced at LATENCY_RATE."""
    expect = round(LATENCY_RATE * seconds)
    with harness.children() as started:
        server = harness.Server(backend, tree, with_http=True, profile_to=profile_to)
        started.append(server)
        tail = ready_child(
            started,
            *("--subscribe", str(server.http_port), "--mode", "latency"),
            *("--decoder", decoder, "--expect", str(expect)),
        )
        sent = harness.run_json(
            script(
                *("--pace", str(server.tcp_port)),
                *("--rate", str(LATENCY_RATE), "--seconds", str(seconds)),
            )
        )
        received = tail.json(RUN_TIMEOUT)
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


def run_filtered(tree: harness.Tree, backend: str, lines: int, query: str | None) -> Json:
    """Lines/s of the 4-client flood beside one tail reading ``/api/tail?<query>`` (or none)."""
    received: Json = {"logs": 0, "missed": 0}
    with harness.children() as started:
        server = harness.Server(backend, tree, with_http=True)
        started.append(server)
        tail = None
        if query is not None:
            tail = ready_child(started, "--drain", str(server.http_port), "--query", query)
        measured = harness.run_json(harness.flood_command(server.tcp_port, lines=lines))
        if tail is not None:
            assert tail.process.stdin is not None
            tail.process.stdin.close()
            received = tail.json(RUN_TIMEOUT)
        counters = server_counters(server)
    total = int(measured["lines"])
    if counters["lines_received"] != total:
        raise RuntimeError(f"sent {total} lines, the server stored {counters['lines_received']}")
    return {
        "lines_per_s": total / float(measured["seconds"]),
        "lines_per_cpu_s": total / float(counters["cpu_seconds"]),
        "received": int(received["logs"]),
        "lagged": int(received["missed"]),
    }


def run_filter_set(tree: harness.Tree, backend: str, lines: int, repeat: list[int]) -> Json:
    """``run_filtered`` for every FILTER_TAILS query, in an order that rotates each repeat."""
    repeat[0] += 1
    shift = repeat[0] % len(FILTER_TAILS)
    order = FILTER_TAILS[shift:] + FILTER_TAILS[:shift]
    return {label: run_filtered(tree, backend, lines, query) for label, query in order}


def describe_filter(runs: Json) -> str:
    return "; ".join(
        f"{label} {run['lines_per_s']:,.0f} lines/s "
        f"({run['received']:,} received, {run['lagged']:,} lagged)"
        for label, run in runs.items()
    )


def filter_summary(backend: str, runs: list[Json]) -> Json:
    """Median rates, and the medians of each repeat's ratios to its own unfiltered run (the
    runs of one repeat follow each other: a drift of a shared machine cancels out)."""
    median = harness.median
    base = median([run["unfiltered"] for run in runs], "lines_per_s")
    summary: Json = {f"{backend}_filter_unfiltered_lines_per_s": round(base)}
    for label, _ in FILTER_TAILS[1:]:
        ratios = [
            {
                key: run[label][key] / run["unfiltered"][key]
                for key in ("lines_per_s", "lines_per_cpu_s")
            }
            for run in runs
        ]
        rate = median([run[label] for run in runs], "lines_per_s")
        summary[f"{backend}_filter_{label}_lines_per_s"] = round(rate)
        summary[f"{backend}_filter_{label}_ratio"] = round(median(ratios, "lines_per_s"), 3)
        summary[f"{backend}_filter_{label}_cpu_ratio"] = round(median(ratios, "lines_per_cpu_s"), 3)
    return summary


def run_ingest_pair(tree: harness.Tree, backend: str, lines: int) -> Json:
    """``run_ingest`` without tails and with STALLED_TAILS, in turn: a drift hits both alike."""
    return {
        "plain": run_ingest(tree, backend, lines, 0),
        "stalled": run_ingest(tree, backend, lines, STALLED_TAILS),
    }


def describe_ingest(pair: Json) -> str:
    return "; ".join(
        f"{count} stalled tails {run['lines_per_s']:,.0f} lines/s "
        f"(server cpu {run['server_cpu_seconds']:.3f} s, "
        f"stalled tails kept {run['tail_lines_kept']:,} lines)"
        for count, run in ((0, pair["plain"]), (STALLED_TAILS, pair["stalled"]))
    )


def ingest_summary(backend: str, pairs: list[Json]) -> Json:
    plain, stalled = [pair["plain"] for pair in pairs], [pair["stalled"] for pair in pairs]
    median = harness.median
    base = median(plain, "lines_per_s")
    with_tails = median(stalled, "lines_per_s")
    # The same per server CPU second: steadier when other processes share the machine.
    base_cpu = median(plain, "lines_per_cpu_s")
    with_tails_cpu = median(stalled, "lines_per_cpu_s")
    # What one stalled tail costs the server, whatever the length of the run.
    extra = median(stalled, "server_cpu_seconds") - median(plain, "server_cpu_seconds")
    return {
        f"{backend}_ingest_lines_per_s": round(base),
        f"{backend}_ingest_stalled_lines_per_s": round(with_tails),
        f"{backend}_ingest_ratio": round(with_tails / base, 3),
        f"{backend}_ingest_lines_per_cpu_s": round(base_cpu),
        f"{backend}_ingest_stalled_lines_per_cpu_s": round(with_tails_cpu),
        f"{backend}_ingest_cpu_ratio": round(with_tails_cpu / base_cpu, 3),
        f"{backend}_stalled_tail_lines_kept": round(median(stalled, "tail_lines_kept")),
        f"{backend}_cpu_ms_per_stalled_tail": round(1000 * extra / STALLED_TAILS, 1),
    }


def describe_live(one: Json) -> str:
    return (
        f"{one['events_per_s']:,.0f} events/s received "
        f"({one['received']:,} received, all through the LOG_PREFIXES fast path; "
        f"{one['lagged']:,} lagged, "
        f"ingest {one['ingest_lines_per_s']:,.0f} lines/s, "
        f"server cpu {one['server_cpu_share']:.0%} of the flood's time, "
        f"subscriber cpu {one['subscriber_cpu_share']:.0%} of its span)"
    )


def live_summary(backend: str, live: list[Json]) -> Json:
    return {
        f"{backend}_live_events_per_s": round(harness.median(live, "events_per_s")),
        f"{backend}_live_ingest_lines_per_s": round(harness.median(live, "ingest_lines_per_s")),
        f"{backend}_live_subscriber_cpu_share": round(
            harness.median(live, "subscriber_cpu_share"), 2
        ),
    }


def describe_latency(one: Json) -> str:
    return (
        f"p50 {one['p50_ms']:.2f} ms, "
        f"p99 {one['p99_ms']:.2f} ms, max {one['max_ms']:.2f} ms from receipt; "
        f"p50 {one['send_p50_ms']:.2f} ms, p99 {one['send_p99_ms']:.2f} ms, "
        f"max {one['send_max_ms']:.2f} ms from send "
        f"({one['received']:,} received, {one['lagged']:,} lagged)"
    )


def latency_summary(backend: str, latency: list[Json]) -> Json:
    keys = ("p50_ms", "p99_ms", "max_ms", "send_p50_ms", "send_p99_ms", "send_max_ms")
    return {f"{backend}_latency_{key}": round(harness.median(latency, key), 3) for key in keys}


@dataclass(frozen=True)
class Measurement:
    """One of the three measurements: how to run a repeat, describe it and summarise them."""

    repeats: int
    run: Callable[[str, harness.Tree], Json]  # (backend, tree): one repeat's figures
    describe: Callable[[Json], str]  # a repeat's progress line
    summarise: Callable[[str, list[Json]], Json]  # (backend, every repeat): the medians


def must_hold(backend: str, after: Json) -> list[tuple[str, bool]]:
    """The targets for what ``after`` (the summary of this checkout) has of ``backend``."""
    checks = []
    ratio = after.get(f"{backend}_ingest_ratio")
    if ratio is not None:
        checks.append(
            (f"{backend} stalled-tail ratio >= {TARGET_INGEST_RATIO}", ratio >= TARGET_INGEST_RATIO)
        )
    live = after.get(f"{backend}_live_events_per_s")
    if live is not None:
        target = TARGET_LIVE_EVENTS_PER_S
        checks.append((f"{backend} live tail >= {target:,} log messages/s", live >= target))
    for label, query in FILTER_TAILS[1:]:
        ratio = after.get(f"{backend}_filter_{label}_ratio")
        if query is None:
            continue  # no tail: the reference, not a filter
        if ratio is not None:
            at_least = TARGET_FILTER_RATIO
            checks.append(
                (f"{backend} ingest, {label}-filtered tail >= {at_least}", ratio >= at_least)
            )
    p99 = after.get(f"{backend}_latency_p99_ms")
    if p99 is not None:
        checks.append((f"{backend} latency p99 < {TARGET_P99_MS} ms", p99 < TARGET_P99_MS))
    return checks


def measure(args: argparse.Namespace) -> None:
    quick = args.quick
    lines = args.lines or (250_000 if quick else 1_000_000)
    flood_seconds = 1.5 if quick else 5.0
    latency_seconds = 2.0 if quick else 10.0
    ingest_repeats = args.repeats or (3 if quick else 5)
    other_repeats = args.repeats or (1 if quick else 3)
    filter_repeat = [0]  # rotates the order of the filter measurement's tails
    measurements = {
        "ingest": Measurement(
            ingest_repeats,
            lambda backend, tree: run_ingest_pair(tree, backend, lines),
            describe_ingest,
            ingest_summary,
        ),
        "live": Measurement(
            other_repeats,
            lambda backend, tree: run_live(tree, backend, flood_seconds, args.decoder),
            describe_live,
            live_summary,
        ),
        "filter": Measurement(
            ingest_repeats,
            lambda backend, tree: run_filter_set(tree, backend, lines, filter_repeat),
            describe_filter,
            filter_summary,
        ),
        "latency": Measurement(
            other_repeats,
            lambda backend, tree: run_latency(tree, backend, latency_seconds, args.decoder),
            describe_latency,
            latency_summary,
        ),
    }
    only = args.only.split(",")
    measured = harness.trees(args.compare)
    summaries: dict[str, Json] = {tree.label: {} for tree in measured}
    checks: list[tuple[str, bool]] = []
    for backend in [name for name in args.backends.split(",") if name]:
        for name, measurement in measurements.items():
            if name not in only:
                continue
            runs = harness.interleave(
                measured,
                measurement.repeats,
                functools.partial(measurement.run, backend),
                measurement.describe,
                f"{backend} {name}",
            )
            for label, results in runs.items():
                summaries[label].update(measurement.summarise(backend, results))
        checks += must_hold(backend, summaries["after"])
    settings = {
        "clients": harness.CLIENTS,
        "lines_per_client": lines,
        "line_bytes": harness.LINE_BYTES,
        "stalled_tails": STALLED_TAILS,
        "flood_seconds": flood_seconds,
        "latency_rate": LATENCY_RATE,
        "latency_seconds": latency_seconds,
        "ingest_repeats": ingest_repeats,
        "repeats": other_repeats,
        "decoder": args.decoder,
        "quick": quick,
    }
    harness.emit(measured, summaries, settings, checks)


def profile(args: argparse.Namespace) -> None:
    """One run of a measurement with the server under cProfile; the top functions on stderr."""
    tree = harness.trees(None)[0]
    backend = args.backends.split(",")[0]
    lines = args.lines or 1_000_000
    with harness.profile_path(args.profile_save) as path:
        if args.profile == "ingest":
            result = run_ingest(tree, backend, lines, STALLED_TAILS, path)
        elif args.profile == "ingest0":
            result = run_ingest(tree, backend, lines, 0, path)
        elif args.profile == "live":
            result = run_live(tree, backend, 5.0, args.decoder, path)
        else:
            result = run_latency(tree, backend, 10.0, args.decoder, path)
        harness.log(f"{args.profile} on {backend} under cProfile: {result}")
        harness.print_profile(path, ("tottime", "cumulative"), 30)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    harness.add_arguments(
        parser,
        quick="fewer, shorter runs (< 60 s a backend)",
        repeats="repeats of every measurement (default ingest 5, others 3; quick 3 and 1)",
    )
    parser.add_argument("--backends", default="asyncio,trio", help="asyncio,trio")
    parser.add_argument(
        "--only", default="ingest,live,filter,latency", help="ingest,live,filter,latency"
    )
    parser.add_argument("--lines", type=int, default=0, help="ingest: lines per client")
    parser.add_argument("--decoder", choices=("raw", "wsproto"), default="raw")
    parser.add_argument(
        "--profile",
        choices=("ingest", "ingest0", "live", "latency"),
        help="one run with the server under cProfile (ingest0: without tails)",
    )
    parser.add_argument("--profile-save", metavar="PATH", help="keep the profile there")
    # The children's entry points.
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=LATENCY_RATE, help=argparse.SUPPRESS)
    parser.add_argument("--stall", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=STALLED_TAILS, help=argparse.SUPPRESS)
    parser.add_argument("--subscribe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--drain", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--query", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("rate", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pace is not None:
        pace(args.pace, args.rate, args.seconds or 1.0)
    elif args.stall is not None:
        stall(args.stall, args.count)
    elif args.drain is not None:
        drain(args.drain, args.query)
    elif args.subscribe is not None:
        subscribe(args.subscribe, args.mode or "rate", args.decoder, args.expect)
    elif args.profile:
        profile(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
