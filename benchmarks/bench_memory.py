"""Memory per client: the RSS a server grows by when N clients connect and stay connected.

Each server runs in its own process: Logatron on asyncio, on trio, the sync server, and in the
same run, as the floor, a bare anyio server on each backend that only reads (and answers a
``PING`` line that ends a chunk, so the load knows it has read everything). A fresh server per
measure; its RSS (``/proc/<pid>/status``, Linux) is read once a first client has been served
and has left (what the first connection loads is not counted), then N clients connect, each
sending ``IAM``, L 64-byte ``LOG`` lines and ``PING`` in one write (the load is
``tests/many_clients.py``, in a process of its own: batches of 500 whose ``PONG``s are awaited
before the next batch connects); all stay connected while the RSS is read again. Bytes per
client = RSS growth / N, for idle connections (L = 0) and full ones (L lines). This script
raises its ``RLIMIT_NOFILE`` for the servers, its children, to inherit.

    python benchmarks/bench_memory.py                   # 10,000 clients, L = 128, ~2 min
    python benchmarks/bench_memory.py --quick           # 2,000 clients
    python benchmarks/bench_memory.py --compare /work/before/src
    python benchmarks/bench_memory.py --clients 1000 --lines 1000 --servers sync --floors ''

Targets (issue 11), with the defaults: a full client at most 20 KB (20,000 bytes, 0.6x the
original logatron's 33.8 KB) on every server; an idle connection at most 1.2x the bare anyio
floor of its backend in the same run (the sync server: the lower of the two floors).
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import time
from pathlib import Path

import harness

CLIENTS = 10_000
QUICK_CLIENTS = 2_000
LINES = 128
SETTLE_SECONDS = 0.5  # after the last PONG, before the RSS is read
TARGET_FULL_BYTES = 20_000
TARGET_IDLE_OVER_FLOOR = 1.2
SERVERS = ("asyncio", "trio", "sync")
FLOORS = ("bare-asyncio", "bare-trio")

# The floor: anyio's own listener and streams, reading 64 KiB at a time and discarding (and
# answering "PING <token>" with "PONG <token>" when a chunk ends with such a line).
BARE_SERVER = """
import sys
import anyio

async def handle(stream):
    async with stream:
        tail = b""
        while True:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            tail = (tail + data)[-64:]
            del data
            line = tail[tail.rfind(b"\\n", 0, len(tail) - 1) + 1 :]
            if line.startswith(b"PING ") and line.endswith(b"\\n"):
                tail = b""
                await stream.send(b"PONG " + line[5:])

async def main():
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await listener.serve(handle)

anyio.run(main, backend=sys.argv[1])
"""
# The load: one process holding every client (tests/many_clients.py).
LOAD = Path(__file__).resolve().parent.parent / "tests" / "many_clients.py"


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def raise_file_limit(clients: int) -> None:
    """Room for every client socket here, and for every accepted one in a server."""
    wanted = clients + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start(kind: str, tree: harness.Tree) -> tuple[harness.Child, int]:
    """A server of ``kind`` (a Logatron server, or a bare floor) and its port."""
    if kind in SERVERS:
        server = harness.Server(kind, tree)
        return server, server.tcp_port
    child = harness.Child([sys.executable, "-c", BARE_SERVER, kind.split("-")[1]], quiet=True)
    try:
        line = child.line(harness.STARTUP_TIMEOUT)
        return child, int(line.rsplit(":", 1)[1])
    except BaseException:
        child.stop()
        raise


def connect(port: int, clients: int, lines: int, prefix: str) -> harness.Child:
    """The load (``tests/many_clients.py``), once every client has its ``PONG``."""
    command = [sys.executable, str(LOAD), str(port), str(clients)]
    load = harness.Child([*command, "--lines", str(lines), "--prefix", prefix], quiet=True)
    try:
        ready = load.line(harness.RUN_TIMEOUT)
        if ready != f"ready {clients}":
            raise load.failure(f"said {ready!r}")
    except BaseException:
        load.stop()
        raise
    return load


def measure_once(kind: str, tree: harness.Tree, *, clients: int, lines: int) -> float:
    """Bytes per client of ``kind`` of ``tree`` for ``clients`` clients of ``lines`` lines."""
    with harness.children() as started:
        server, port = start(kind, tree)
        started.append(server)
        pid = server.process.pid
        connect(port, 1, lines, "warm-").stop()  # what the first client loads is not counted
        time.sleep(SETTLE_SECONDS)
        before = rss_bytes(pid)
        started.append(connect(port, clients, lines, "mem-"))
        time.sleep(SETTLE_SECONDS)
        after = rss_bytes(pid)
    return (after - before) / clients


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    harness.add_arguments(
        parser, quick=f"{QUICK_CLIENTS:,} clients", repeats="repeats per measure (1)"
    )
    parser.add_argument("--clients", type=int, default=CLIENTS, help="clients per measure")
    parser.add_argument("--lines", type=int, default=LINES, help="lines of a full client")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--floors", default=",".join(FLOORS), help="bare servers measured")
    args = parser.parse_args()
    clients = QUICK_CLIENTS if args.quick else args.clients
    repeats = args.repeats or 1
    raise_file_limit(clients)
    measured = harness.trees(args.compare)
    servers = [name for name in args.servers.split(",") if name]
    floors = [name for name in args.floors.split(",") if name]

    def describe(value: float) -> str:
        return f"{value:,.0f} bytes per client"

    summaries: dict[str, harness.Json] = {tree.label: {} for tree in measured}
    for kind in servers:
        for mode, lines in (("idle", 0), ("full", args.lines)):
            runs = harness.interleave(
                measured,
                repeats,
                functools.partial(measure_once, kind, clients=clients, lines=lines),
                describe,
                f"{kind} {mode}",
            )
            for label, values in runs.items():
                summaries[label][f"{kind}_{mode}_bytes"] = round(statistics.median(values))
    floor_values: dict[str, int] = {}
    for kind in floors:
        values = [measure_once(kind, measured[0], clients=clients, lines=0) for _ in range(repeats)]
        floor_values[kind] = round(statistics.median(values))
        harness.log(f"{kind} idle: {describe(floor_values[kind])}")
    must_hold: list[tuple[str, bool]] = []
    for summary in summaries.values():
        for kind, value in floor_values.items():
            summary[f"{kind}_idle_bytes"] = value
        for kind in servers:
            floor = _floor_of(kind, floor_values)
            if floor is not None:
                idle = summary[f"{kind}_idle_bytes"]
                summary[f"{kind}_idle_over_floor"] = round(idle / floor, 3)
    after = summaries["after"]
    default_load = clients == CLIENTS and args.lines == LINES
    for kind in servers:
        must_hold.append(
            (
                f"{kind} full client <= {TARGET_FULL_BYTES:,} bytes",
                after[f"{kind}_full_bytes"] <= TARGET_FULL_BYTES,
            )
        )
        if f"{kind}_idle_over_floor" in after:
            must_hold.append(
                (
                    f"{kind} idle <= {TARGET_IDLE_OVER_FLOOR}x its floor",
                    after[f"{kind}_idle_over_floor"] <= TARGET_IDLE_OVER_FLOOR,
                )
            )
    settings = {
        "clients": clients,
        "lines": args.lines,
        "line_bytes": harness.LINE_BYTES,
        "repeats": repeats,
        "quick": args.quick or not default_load,
    }
    harness.emit(measured, summaries, settings, must_hold)


def _floor_of(kind: str, floors: dict[str, int]) -> int | None:
    """The floor an idle connection of ``kind`` is held to (the sync server: the lowest)."""
    if kind == "sync":
        return min(floors.values(), default=None)
    return floors.get(f"bare-{kind}")


if __name__ == "__main__":
    main()
