"""Server throughput over TCP: 4 clients each send IAM, N 64-byte LOG lines, then PING.

For each server (anyio on asyncio, anyio on trio, and the sync server if it is importable) the
server runs in its own process (started as its command with ``--port 0``; the port is read from
its startup line), and the load generator in another (this script with ``--generate``): 4
threads, one blocking socket each, sending a pre-built buffer in 1 MiB ``sendall`` chunks. The
time runs from the first byte sent to the last ``PONG`` received, so every line is counted only
once the server has applied it. Prints one rate per server and repeat, then, as its last line,
one JSON object with the median (and best) rate of each server.

    python benchmarks/bench_server.py [--quick] [--repeats N] [--servers asyncio,trio,sync]
    python benchmarks/bench_server.py --profile trio    # cProfile of the server, to stderr
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CLIENTS = 4
LINES = 250_000
QUICK_LINES = 50_000
LINE_BYTES = 64
SEND_CHUNK = 1024 * 1024
TIMEOUT = 120.0
_STARTUP_RE = re.compile(rb":(\d+)\s*$")


def make_payload(lines: int) -> bytes:
    """``lines`` LOG lines of exactly 64 bytes each (fixed content: runs are comparable)."""
    body = b"LOG worker-7 handled request 4711 in 12.5 ms status=200 path=/api/v1"
    line = body[: LINE_BYTES - 1] + b"\n"
    assert len(line) == LINE_BYTES
    return line * lines


def client(
    index: int, port: int, payload: bytes, start: threading.Barrier, out: list[float]
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start.wait()
        view = memoryview(payload)
        sock.sendall(b"IAM bench-%d\n" % index)
        for offset in range(0, len(view), SEND_CHUNK):
            sock.sendall(view[offset : offset + SEND_CHUNK])
        sock.sendall(b"PING done\n")
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("the server closed the connection")
            reply += data
        if reply != b"PONG done\n":
            raise RuntimeError(f"unexpected reply {reply!r}")
        out.append(time.perf_counter())


def generate(port: int, lines: int) -> None:
    """The load generator (runs in its own process): prints one JSON object with the rate."""
    payload = make_payload(lines)
    start = threading.Barrier(CLIENTS + 1)
    finished: list[float] = []
    threads = [
        threading.Thread(target=client, args=(index, port, payload, start, finished))
        for index in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(TIMEOUT)
    if len(finished) != CLIENTS:
        raise SystemExit("a client failed")
    elapsed = max(finished) - began
    print(json.dumps({"lines": CLIENTS * lines, "seconds": elapsed}))


def server_command(server: str, profile_to: str | None) -> list[str]:
    python = [sys.executable]
    if profile_to:
        python += ["-m", "cProfile", "-o", profile_to]
    if server == "sync":
        return [*python, "-m", "logatron_sync", "--port", "0"]
    # TCP only: this measures ingest, and a fixed HTTP port could clash between runs.
    return [
        *python,
        "-m",
        "logatron_anyio",
        "serve",
        "--port",
        "0",
        "--no-http",
        "--backend",
        server,
    ]


def run_once(server: str, lines: int, profile_to: str | None = None) -> float:
    """Start ``server``, run the generator against it, stop it; returns lines per second."""
    process = subprocess.Popen(
        server_command(server, profile_to),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = _STARTUP_RE.search(line)
        if not match:
            raise SystemExit(f"{server}: no port in its startup line {line!r}")
        port = int(match[1])
        result = subprocess.run(
            [sys.executable, __file__, "--generate", str(port), "--lines", str(lines)],
            capture_output=True,
            check=True,
            timeout=TIMEOUT,
        )
        measured = json.loads(result.stdout.decode().strip().splitlines()[-1])
        return float(measured["lines"]) / float(measured["seconds"])
    finally:
        process.terminate()
        process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_LINES} lines per client")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers", default="asyncio,trio,sync")
    parser.add_argument("--profile", metavar="SERVER", help="profile one run of SERVER")
    parser.add_argument("--generate", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, default=LINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    lines = QUICK_LINES if args.quick else args.lines
    if args.generate is not None:
        generate(args.generate, lines)
        return
    if args.profile:
        import pstats

        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "server.prof")
            rate = run_once(args.profile, lines, path)
            print(f"{args.profile}: {rate:,.0f} lines/s (under cProfile)")
            pstats.Stats(path, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        return
    servers = [name for name in args.servers.split(",") if name]
    if "sync" in servers and importlib.util.find_spec("logatron_sync.__main__") is None:
        print("sync: skipped (logatron_sync has no command yet)")
        servers.remove("sync")
    rates: dict[str, list[float]] = {}
    for server in servers:
        for repeat in range(1, args.repeats + 1):
            rate = run_once(server, lines)
            rates.setdefault(server, []).append(rate)
            print(f"{server} repeat {repeat}/{args.repeats}: {rate:,.0f} lines/s", flush=True)
    summary: dict[str, object] = {}
    for name, measured in rates.items():
        summary[f"{name}_lines_per_s"] = round(statistics.median(measured))
        summary[f"{name}_best_lines_per_s"] = round(max(measured))
    summary.update(
        clients=CLIENTS,
        lines_per_client=lines,
        line_bytes=LINE_BYTES,
        repeats=args.repeats,
        python=platform.python_version(),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
