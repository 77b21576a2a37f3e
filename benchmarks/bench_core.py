"""Core throughput: 64-byte LOG lines in 64 KiB chunks through a Session into the Registry.

One subscriber is attached. In the same run a baseline does only ``bytes.split`` and
``deque.append((timestamp, message))`` per line, so the ratio is comparable across machines.
Prints one rate per repeat, then, as its last line, one JSON object with the medians.

    python benchmarks/bench_core.py [--quick]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from collections import deque

from logatron_core import DEFAULT_BUFFER_SIZE, Registry, RegistryEvent, Session

LINE_BYTES = 64
CHUNK_BYTES = 64 * 1024


def make_chunk() -> bytes:
    """64 KiB of 64-byte LOG lines (fixed content: the run is deterministic)."""
    body = b"LOG worker-7 handled request 4711 in 12.5 ms status=200 path=/api"
    line = body[: LINE_BYTES - 1] + b"\n"
    assert len(line) == LINE_BYTES
    return line * (CHUNK_BYTES // LINE_BYTES)


def run_core(chunk: bytes, chunks: int) -> float:
    registry = Registry()
    received = 0

    def subscriber(event: RegistryEvent) -> None:
        nonlocal received
        received += 1

    registry.subscribe(subscriber)
    session = Session(registry)
    session.receive_data(b"IAM bench\n", 0.0)
    start = time.perf_counter()
    for _ in range(chunks):
        session.receive_data(chunk, time.time())
    elapsed = time.perf_counter() - start
    lines = chunks * chunk.count(b"\n")
    assert registry.stats.lines_received == lines, "every line must be stored"
    assert received >= chunks, "the subscriber must see every run"
    return lines / elapsed


def run_baseline(chunk: bytes, chunks: int) -> float:
    ring: deque[tuple[float, bytes]] = deque(maxlen=DEFAULT_BUFFER_SIZE)
    start = time.perf_counter()
    for _ in range(chunks):
        timestamp = time.time()
        for message in chunk.split(b"\n"):
            ring.append((timestamp, message))
    elapsed = time.perf_counter() - start
    return chunks * chunk.count(b"\n") / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (< 30 s)")
    args = parser.parse_args()
    repeats, chunks = (5, 2000) if args.quick else (11, 6000)
    chunk = make_chunk()
    core_rates, baseline_rates = [], []
    for repeat in range(repeats):
        baseline_rates.append(run_baseline(chunk, chunks))
        core_rates.append(run_core(chunk, chunks))
        print(
            f"repeat {repeat + 1}/{repeats}: core {core_rates[-1]:,.0f} lines/s, "
            f"baseline {baseline_rates[-1]:,.0f} lines/s",
            file=sys.stderr,
        )
    core = statistics.median(core_rates)
    baseline = statistics.median(baseline_rates)
    print(
        json.dumps(
            {
                "lines_per_s": round(core),
                "baseline_lines_per_s": round(baseline),
                "baseline_ratio": round(core / baseline, 3),
                "line_bytes": LINE_BYTES,
                "chunk_bytes": CHUNK_BYTES,
                "repeats": repeats,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
