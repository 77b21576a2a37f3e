"""Where a connection's memory goes: tracemalloc's view of N clients on the anyio server.

The server runs in a child process (importing the tree given, this checkout's ``src`` by
default) under ``tracemalloc``, on asyncio or trio; the load (``tests/many_clients.py``) in
another. A first client is served and leaves (not counted), a snapshot is taken, N clients
connect (``IAM``, L 64-byte ``LOG`` lines, ``PING``, as in ``bench_memory.py``) and stay, a
second snapshot is taken: the allocation sites that grew, in bytes and objects per client,
largest first. Python objects only (tracemalloc does not see the kernel's socket buffers nor
the allocator's slack; ``bench_memory.py`` measures RSS).

    python benchmarks/memory_trace.py --backend trio --lines 0
    python benchmarks/memory_trace.py --backend asyncio --lines 128 --src /work/before/src
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import harness

LOAD = Path(__file__).resolve().parent.parent / "tests" / "many_clients.py"
SHOWN = 30  # sites printed
MIN_BYTES_PER_CLIENT = 8.0  # smaller sites are summed up, not printed


def _serve(backend: str, clients: int, lines: int) -> None:
    """The child: serve, snapshot around the load, print the sites as JSON lines."""
    import logging

    import anyio

    from logatron_anyio import LogatronServer

    logging.disable(logging.INFO)
    tracemalloc.start(1)

    def snapshot() -> tracemalloc.Snapshot:
        gc.collect()
        return tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )

    async def load(port: int, count: int, prefix: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(LOAD), str(port), str(count), "--lines", str(lines)]

        def start() -> subprocess.Popen[bytes]:
            pipe = subprocess.PIPE
            return subprocess.Popen([*command, "--prefix", prefix], stdin=pipe, stdout=pipe)

        process = await anyio.to_thread.run_sync(start)
        assert process.stdout is not None
        with anyio.fail_after(harness.RUN_TIMEOUT):
            line = await anyio.to_thread.run_sync(process.stdout.readline)
        if line != f"ready {count}\n".encode():
            raise SystemExit(f"the load said {line!r}")
        return process

    def stop(process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.wait(harness.STOP_TIMEOUT)
        process.stdout.close()

    async def main() -> None:
        server = LogatronServer(port=0)
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            stop(await load(server.port, 1, "warm-"))
            await anyio.sleep(0.3)
            before = snapshot()
            process = await load(server.port, clients, "c")
            await anyio.sleep(0.3)
            after = snapshot()
            stop(process)
            for stat in after.compare_to(before, "lineno"):
                frame = stat.traceback[0]
                site = {"file": frame.filename, "line": frame.lineno, "bytes": stat.size_diff}
                print(json.dumps({**site, "objects": stat.count_diff}), flush=True)
            tg.cancel_scope.cancel()

    anyio.run(main, backend=backend)


def _source_line(file: str, line: int) -> str:
    try:
        return Path(file).read_text().splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=0, help="LOG lines per client")
    parser.add_argument("--src", help="the src tree to import (default: this checkout's)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.serve:
        _serve(args.backend, args.clients, args.lines)
        return
    tree = harness.trees(None)[0] if args.src is None else harness.Tree("tree", Path(args.src))
    command = harness.script_command(__file__, "--serve", "--backend", args.backend)
    command += ["--clients", str(args.clients), "--lines", str(args.lines)]
    result = subprocess.run(
        command, stdout=subprocess.PIPE, check=True, timeout=harness.RUN_TIMEOUT, env=tree.env()
    )
    sites: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    total = sum(site["bytes"] for site in sites) / args.clients
    print(f"{tree.src}, {args.backend}, {args.clients:,} clients of {args.lines} lines:")
    own = sum(site["bytes"] for site in sites if "/logatron_" in site["file"]) / args.clients
    print(f"{total:10,.0f} bytes per client (traced Python objects)")
    print(f"{own:10,.0f} of them allocated in Logatron's own modules")
    shown = 0.0
    for site in sorted(sites, key=lambda site: -site["bytes"])[:SHOWN]:
        per_client = site["bytes"] / args.clients
        if per_client < MIN_BYTES_PER_CLIENT:
            break
        shown += per_client
        place = f"{Path(site['file']).parent.name}/{Path(site['file']).name}:{site['line']}"
        objects = site["objects"] / args.clients
        source = _source_line(site["file"], site["line"])
        print(f"{per_client:10,.0f} B {objects:5.2f} obj  {place:42} {source[:60]}")
    print(f"{total - shown:10,.0f} B elsewhere (smaller sites)")


if __name__ == "__main__":
    main()
