"""What ``--data-dir`` costs: ingest, PONG latency and the logging handler, memory vs disk.

Three measures, each into ``logatron serve`` (asyncio, TCP only) without and with
``--data-dir`` (a fresh temporary directory per run), repeats interleaved in the same run:

- ingest: ``bench_server``'s load (4 clients x 250,000 64-byte lines, one PING at the end;
  the clock stops at the last PONG, so with ``--data-dir`` every line counted is on disk);
- PING every 1,000 lines: 4 clients, each sending 1,000 lines then ``PING`` and waiting for its
  ``PONG`` before the next 1,000 (as the logging handler does); the PONG latencies' p50/p99;
- the handler: ``LogatronHandler`` records per second, queued then flushed (each batch waits
  for its PONG).

With ``--data-dir`` it also reports the bytes the server process wrote to the disk per second
(``/proc/<pid>/io`` ``write_bytes``). The last line is one JSON object with the medians and
the issue's targets: ingest with ``--data-dir`` >= 0.8x memory, PONG p99 < 50 ms, handler
>= 0.5x.

    python benchmarks/bench_durable.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import harness

LINES = 250_000
QUICK_LINES = 50_000
PING_EVERY = 1000
PING_ROUNDS = 250  # per client: 250,000 lines
QUICK_PING_ROUNDS = 50
HANDLER_RECORDS = 50_000
QUICK_HANDLER_RECORDS = 10_000

TARGET_INGEST_RATIO = 0.8
TARGET_PONG_P99_SECONDS = 0.050
TARGET_HANDLER_RATIO = 0.5


def disk_written(pid: int) -> int:
    """Bytes process ``pid`` caused to be written to storage (Linux ``/proc/<pid>/io``)."""
    try:
        with open(f"/proc/{pid}/io") as io:
            for line in io:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def with_server(durable: bool, measure: Callable[[harness.Server], dict[str, Any]]) -> Any:
    """Start a server (with a fresh data dir when ``durable``), ``measure(server)``, stop it;
    adds ``disk_bytes_per_s`` to what ``measure`` returns (which must hold ``seconds``)."""
    tree = harness.trees(None)[0]
    with tempfile.TemporaryDirectory() as data_dir, harness.children() as started:
        extra = ["--data-dir", data_dir] if durable else []
        server = harness.Server("asyncio", tree, extra=extra)
        started.append(server)
        written = disk_written(server.process.pid)
        result = measure(server)
        result["disk_bytes_per_s"] = (disk_written(server.process.pid) - written) / result[
            "seconds"
        ]
        return result


def ingest(server: harness.Server, lines: int) -> dict[str, Any]:
    measured = harness.run_json(harness.flood_command(server.tcp_port, lines=lines))
    return {"rate": measured["lines"] / measured["seconds"], "seconds": measured["seconds"]}


def ping_every(server: harness.Server, rounds: int) -> dict[str, Any]:
    """4 clients: (1,000 lines, PING, wait for PONG) x rounds; latencies of every PONG."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunk = harness.LINE * PING_EVERY

    def client(index: int) -> None:
        with socket.create_connection((harness.HOST, server.tcp_port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"IAM pinger-%d\n" % index)
            mine = []
            for round_ in range(rounds):
                sock.sendall(chunk + b"PING %d\n" % round_)
                sent = time.perf_counter()
                if harness.read_reply(sock) != b"PONG %d\n" % round_:
                    raise RuntimeError("unexpected reply")
                mine.append(time.perf_counter() - sent)
            with lock:
                latencies.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(harness.CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(harness.RUN_TIMEOUT)
    seconds = time.perf_counter() - began
    if len(latencies) != harness.CLIENTS * rounds:
        raise RuntimeError("a client failed")
    latencies.sort()
    return {
        "rate": len(latencies) * PING_EVERY / seconds,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "seconds": seconds,
    }


def handler(server: harness.Server, records: int) -> dict[str, Any]:
    from logatron_sync import LogatronHandler

    sink = LogatronHandler("bench-handler", harness.HOST, server.tcp_port, queue_size=records)
    log = logging.getLogger("bench_durable.handler")
    log.propagate = False
    log.addHandler(sink)
    try:
        began = time.perf_counter()
        for i in range(records):
            log.warning("record %d of the durable benchmark", i)
        sink.flush(harness.RUN_TIMEOUT)
        seconds = time.perf_counter() - began
        stats = sink.stats()
        if stats.queued or stats.dropped or stats.confirmed < records:
            raise RuntimeError(f"the handler did not confirm every record: {stats}")
    finally:
        log.removeHandler(sink)
        sink.close()
    return {"rate": records / seconds, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    harness.add_arguments(parser, quick="shorter loads", repeats="repeats per measure (3)")
    args = parser.parse_args()
    if args.compare:
        parser.error("bench_durable compares memory and --data-dir in one tree")
    repeats = args.repeats or 3
    lines = QUICK_LINES if args.quick else LINES
    rounds = QUICK_PING_ROUNDS if args.quick else PING_ROUNDS
    records = QUICK_HANDLER_RECORDS if args.quick else HANDLER_RECORDS
    measures: dict[str, Callable[[harness.Server], dict[str, Any]]] = {
        "ingest": lambda server: ingest(server, lines),
        "ping_every_1000": lambda server: ping_every(server, rounds),
        "handler": lambda server: handler(server, records),
    }
    summary: dict[str, Any] = {}
    for name, measure in measures.items():
        runs: dict[str, list[dict[str, Any]]] = {"memory": [], "data_dir": []}
        for repeat, kind in harness.alternating(list(runs), repeats):
            result = with_server(kind == "data_dir", measure)
            runs[kind].append(result)
            extra = f", p99 {result['p99'] * 1000:.1f} ms" if "p99" in result else ""
            harness.log(f"{name} {kind} {repeat}/{repeats}: {result['rate']:,.0f}/s{extra}")
        for kind, results in runs.items():
            summary[f"{name}_{kind}_per_s"] = round(statistics.median(r["rate"] for r in results))
            if "p99" in results[0]:
                summary[f"{name}_{kind}_pong_p50_ms"] = round(
                    statistics.median(r["p50"] for r in results) * 1000, 2
                )
                summary[f"{name}_{kind}_pong_p99_ms"] = round(
                    statistics.median(r["p99"] for r in results) * 1000, 2
                )
        summary[f"{name}_data_dir_disk_bytes_per_s"] = round(
            statistics.median(r["disk_bytes_per_s"] for r in runs["data_dir"])
        )
        summary[f"{name}_ratio"] = round(
            summary[f"{name}_data_dir_per_s"] / summary[f"{name}_memory_per_s"], 3
        )
    must_hold = [
        (f"ingest with --data-dir >= {TARGET_INGEST_RATIO}x memory",
         summary["ingest_ratio"] >= TARGET_INGEST_RATIO),
        (f"PONG p99 with --data-dir < {TARGET_PONG_P99_SECONDS * 1000:g} ms",
         summary["ping_every_1000_data_dir_pong_p99_ms"] < TARGET_PONG_P99_SECONDS * 1000),
        (f"handler with --data-dir >= {TARGET_HANDLER_RATIO}x memory",
         summary["handler_ratio"] >= TARGET_HANDLER_RATIO),
    ]  # fmt: skip
    settings = {"clients": harness.CLIENTS, "repeats": repeats, "quick": args.quick}
    harness.emit(harness.trees(None), {"after": summary}, settings, must_hold)


if __name__ == "__main__":
    main()
