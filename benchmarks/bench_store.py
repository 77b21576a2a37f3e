"""What ``--store redis://`` costs: bench_server's load into memory, into Redis, two front ends.

In one run, on a redis-server of the benchmark's own (a free loopback port, a temporary
directory, no persistence; emptied before each run), repeats interleaved (the order turned
round every other repeat, so that a drift of a shared machine hits every measure alike):

- ``memory``: ``logatron serve`` (asyncio, TCP only) and bench_server's load (4 clients x
  250,000 64-byte lines, one PING at the end; the clock stops at the last PONG);
- ``redis``: the same into ``logatron serve --store redis://…``: the last PONG means Redis
  acknowledged every line and the front end's mirror holds it;
- ``redis_two``: two front ends on that Redis, the 4 clients split 2 and 2 (every line still
  reaches both mirrors);
- ``xadd``: ``redis-benchmark``'s pipelined XADD (``-P 64``, one 64-byte field) on the same
  redis-server: the engine's own rate of stream entries (a Logatron entry is a run of lines).

Then ``latency`` once: one client paces 10,000 lines/s into front end A, a WebSocket tail on
front end B reads them (``bench_tail.py``'s ``--pace`` and ``--subscribe`` children): the
p50/p99 from the line's send to its arrival on B.

The last line is one JSON object with the medians and the issue's targets: Redis at least
0.5x memory; A to B p99 under 100 ms. It also gives the CPU time per million lines of the
front end (``/proc``) and of redis-server (``INFO cpu``) in the ``memory`` and ``redis``
measures: where the time goes.

    python benchmarks/bench_store.py [--quick] [--repeats N] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness

LINES = 250_000
QUICK_LINES = 50_000
LATENCY_RATE = 10_000
LATENCY_SECONDS = 5.0
QUICK_LATENCY_SECONDS = 2.0
XADD_ENTRIES = 500_000
QUICK_XADD_ENTRIES = 100_000

TARGET_RATIO = 0.5
TARGET_P99_MS = 100.0

BENCH_TAIL = str(Path(__file__).with_name("bench_tail.py"))


class Redis:
    """``redis-server`` on a free loopback port in a temporary directory, no persistence."""

    def __init__(self, directory: str) -> None:
        with socket.socket() as probe:
            probe.bind((harness.HOST, 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"redis://{harness.HOST}:{self.port}/0"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", harness.HOST, "--dir", directory,
             "--save", "", "--appendonly", "no", "--logfile", f"{directory}/redis.log"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + harness.STARTUP_TIMEOUT
        while self.cli("PING") != "PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """The CPU time (user and system) redis-server has used."""
        info = dict(line.split(":", 1) for line in self.cli("INFO", "cpu").splitlines()
                    if ":" in line)  # fmt: skip
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-h", harness.HOST, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=harness.STOP_TIMEOUT,
        )
        return result.stdout.strip()

    def stop(self) -> None:
        self.cli("SHUTDOWN", "NOSAVE")
        try:
            self.process.wait(harness.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(harness.STOP_TIMEOUT)


@contextmanager
def redis_server() -> Iterator[Redis]:
    for command in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(command) is None:
            raise SystemExit(f"{command} is not installed (Debian: apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as directory:
        redis = Redis(directory)
        try:
            yield redis
        finally:
            redis.stop()


def ingest(
    redis: Redis,
    store: str,
    front_ends: int,
    lines: int,
    cpu: dict[str, list[float]],
    backend: str = "asyncio",
) -> float:
    """bench_server's load into ``front_ends`` servers (``store``: memory or redis); lines/s.
    Appends to ``cpu`` the CPU seconds per million lines of the front ends and of Redis."""
    tree = harness.trees(None)[0]
    redis.cli("FLUSHALL")
    extra = [] if store == "memory" else ["--store", redis.url]
    with harness.children() as started:
        servers = []
        for _ in range(front_ends):
            server = harness.Server(backend, tree, extra=extra)
            started.append(server)
            servers.append(server)
        redis_before = redis.cpu_seconds()
        command = harness.flood_command([server.tcp_port for server in servers], lines=lines)
        measured = harness.run_json(command)
        millions = float(measured["lines"]) / 1e6
        front = sum(server.cpu_seconds() for server in servers)
        cpu.setdefault(f"{store}_front_end", []).append(front / millions)
        cpu.setdefault(f"{store}_redis", []).append((redis.cpu_seconds() - redis_before) / millions)
    return float(measured["lines"]) / float(measured["seconds"])


def xadd(redis: Redis, entries: int) -> float:
    """redis-benchmark's pipelined XADD of one 64-byte field: entries/s."""
    redis.cli("FLUSHALL")
    value = harness.LINE[4:-1].decode()
    result = subprocess.run(
        ["redis-benchmark", "-h", harness.HOST, "-p", str(redis.port), "-n", str(entries),
         "-P", "64", "--csv", "XADD", "bench:xadd", "*", "m", value],
        capture_output=True, text=True, timeout=harness.RUN_TIMEOUT, check=True,
    )  # fmt: skip
    row = result.stdout.strip().splitlines()[-1]
    return float(row.split('","')[1])


def latency(redis: Redis, seconds: float, backend: str = "asyncio") -> dict[str, float]:
    """A client paces LATENCY_RATE lines/s into front end A; a tail on front end B."""
    tree = harness.trees(None)[0]
    redis.cli("FLUSHALL")
    expect = round(LATENCY_RATE * seconds)
    with harness.children() as started:
        a = harness.Server(backend, tree, extra=["--store", redis.url])
        b = harness.Server(backend, tree, with_http=True, extra=["--store", redis.url])
        started += [a, b]
        subscribe = ["--subscribe", str(b.http_port), "--mode", "latency", "--decoder", "raw"]
        tail = harness.Child(
            harness.script_command(BENCH_TAIL, *subscribe, "--expect", str(expect))
        )
        started.append(tail)
        if tail.line(harness.STARTUP_TIMEOUT) != "ready":
            raise tail.failure("did not print ready")
        pace = ["--pace", str(a.tcp_port), "--rate", str(LATENCY_RATE), "--seconds", str(seconds)]
        harness.run_json(harness.script_command(BENCH_TAIL, *pace))
        received = tail.json(harness.RUN_TIMEOUT)
    if received["logs"] != expect:
        raise RuntimeError(f"the tail on B got {received['logs']} of {expect} lines")
    return {key: round(float(received[key]), 2) for key in ("send_p50_ms", "send_p99_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    harness.add_arguments(parser, quick="shorter loads", repeats="repeats per measure (5)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                        help="the front ends' backend (default asyncio)")  # fmt: skip
    args = parser.parse_args()
    backend = args.backend
    if args.compare:
        parser.error("bench_store compares the stores of one tree")
    repeats = args.repeats or 5
    lines = QUICK_LINES if args.quick else LINES
    entries = QUICK_XADD_ENTRIES if args.quick else XADD_ENTRIES
    cpu: dict[str, list[float]] = {}
    with redis_server() as redis:
        measures: dict[str, Callable[[], float]] = {
            "memory": lambda: ingest(redis, "memory", 1, lines, cpu, backend),
            "redis": lambda: ingest(redis, "redis", 1, lines, cpu, backend),
            "redis_two": lambda: ingest(redis, "redis", 2, lines, {}, backend),
            "xadd": lambda: xadd(redis, entries),
        }
        runs: dict[str, list[float]] = {name: [] for name in measures}
        for repeat, name in harness.alternating(list(measures), repeats):
            rate = measures[name]()
            runs[name].append(rate)
            unit = "entries/s" if name == "xadd" else "lines/s"
            harness.log(f"{name} {repeat}/{repeats}: {rate:,.0f} {unit}")
        seconds = QUICK_LATENCY_SECONDS if args.quick else LATENCY_SECONDS
        across = latency(redis, seconds, backend)
        harness.log(f"A to B at {LATENCY_RATE:,} lines/s: p50 {across['send_p50_ms']} ms, "
                    f"p99 {across['send_p99_ms']} ms")  # fmt: skip
    summary: dict[str, Any] = {f"{name}_per_s": round(statistics.median(rates))
                               for name, rates in runs.items()}  # fmt: skip
    summary["redis_ratio"] = round(summary["redis_per_s"] / summary["memory_per_s"], 3)
    summary["redis_two_ratio"] = round(summary["redis_two_per_s"] / summary["memory_per_s"], 3)
    summary["redis_lines_per_xadd_entry"] = round(summary["redis_per_s"] / summary["xadd_per_s"], 3)
    for name, per_million in cpu.items():
        summary[f"cpu_s_per_m_{name}"] = round(statistics.median(per_million), 3)
    summary["a_to_b_p50_ms"] = across["send_p50_ms"]
    summary["a_to_b_p99_ms"] = across["send_p99_ms"]
    must_hold = [
        (f"--store redis >= {TARGET_RATIO}x memory", summary["redis_ratio"] >= TARGET_RATIO),
        (f"a line sent to A reaches a tail on B: p99 < {TARGET_P99_MS:g} ms at "
         f"{LATENCY_RATE:,} lines/s", summary["a_to_b_p99_ms"] < TARGET_P99_MS),
    ]  # fmt: skip
    settings = {"clients": harness.CLIENTS, "repeats": repeats, "quick": args.quick,
                "backend": backend}  # fmt: skip
    harness.emit(harness.trees(None), {"after": summary}, settings, must_hold)


if __name__ == "__main__":
    main()
