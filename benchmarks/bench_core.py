"""Core throughput: 64-byte LOG lines in 64 KiB chunks through a Session into the Registry.

One subscriber is attached. In the same run a baseline does only ``bytes.split`` and
``deque.append((timestamp, message))`` per line, so the ratio is comparable across machines.
Each repeat runs in a child process (this script with ``--chunks``) importing its tree, so
``--compare SRC`` measures another tree in the same run, repeats interleaved.
Prints one rate per repeat, then, as its last line, one JSON object with the medians.

    python benchmarks/bench_core.py [--quick] [--repeats N] [--compare SRC]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque

import harness
from logatron_core import DEFAULT_BUFFER_SIZE, Registry, RegistryEvent, Session

CHUNK_BYTES = 64 * 1024
TARGET_LINES_PER_S = 3_000_000
TARGET_BASELINE_RATIO = 0.4


def make_chunk() -> bytes:
    """64 KiB of 64-byte LOG lines (fixed content: the run is deterministic)."""
    return harness.LINE * (CHUNK_BYTES // harness.LINE_BYTES)


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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    harness.add_arguments(
        parser, quick="5 shorter repeats (< 30 s)", repeats="repeats (default 11, quick 5)"
    )
    parser.add_argument("--chunks", type=int, help=argparse.SUPPRESS)  # a child: one repeat
    args = parser.parse_args()
    if args.chunks:
        chunk = make_chunk()
        baseline = run_baseline(chunk, args.chunks)
        print(json.dumps({"core": run_core(chunk, args.chunks), "baseline": baseline}))
        return
    repeats, chunks = (5, 2000) if args.quick else (11, 6000)
    repeats = args.repeats or repeats
    measured = harness.trees(args.compare)

    def measure(tree: harness.Tree) -> harness.Json:
        command = harness.script_command(__file__, "--chunks", str(chunks))
        return harness.run_json(command, env=tree.env())

    def describe(rates: harness.Json) -> str:
        return f"core {rates['core']:,.0f} lines/s, baseline {rates['baseline']:,.0f} lines/s"

    summaries: dict[str, harness.Json] = {}
    for label, rates in harness.interleave(measured, repeats, measure, describe, "repeat").items():
        core = harness.median(rates, "core")
        baseline = harness.median(rates, "baseline")
        summaries[label] = {
            "lines_per_s": round(core),
            "baseline_lines_per_s": round(baseline),
            "baseline_ratio": round(core / baseline, 3),
        }
    core, ratio = summaries["after"]["lines_per_s"], summaries["after"]["baseline_ratio"]
    must_hold = [
        (f"after >= {TARGET_LINES_PER_S:,} lines/s", core >= TARGET_LINES_PER_S),
        (f"after >= {TARGET_BASELINE_RATIO}x the baseline", ratio >= TARGET_BASELINE_RATIO),
    ]
    settings = {
        "line_bytes": harness.LINE_BYTES,
        "chunk_bytes": CHUNK_BYTES,
        "repeats": repeats,
        "quick": args.quick,
    }
    harness.emit(measured, summaries, settings, must_hold)


if __name__ == "__main__":
    main()
