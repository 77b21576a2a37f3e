"""Server throughput over TCP: 4 clients each send IAM, N 64-byte LOG lines, then PING.

For each server (anyio on asyncio, anyio on trio, and the sync server if the tree has its
command) the server runs in its own process (its command with ``--port 0``, TCP only; the port
read from its startup line), and the load generator in another (``harness.flood_command``: 4
threads, one blocking socket each, sending 1 MiB ``sendall`` chunks). The time runs from the
first byte sent to the last ``PONG`` received, so every line is counted only once the server
has applied it. Prints one rate per server and repeat, then, as its last line, one JSON object
with the median (and best) rate of each server. ``--compare SRC`` measures another tree in the
same run, repeats interleaved.

    python benchmarks/bench_server.py [--quick] [--repeats N] [--servers asyncio,trio,sync]
    python benchmarks/bench_server.py --repeats 5 --compare /work/before/src [--target 1.2]
    python benchmarks/bench_server.py --profile trio    # cProfile of the server, to stderr
"""

from __future__ import annotations

import argparse
import functools
import statistics

import harness

LINES = 250_000
QUICK_LINES = 50_000
# Issue 7: asyncio and trio within 5% of their medians before a restructuring (the default of
# --target); issue 11 asked for a rise: --target 1.2.
TARGET_AFTER_OVER_BEFORE = 0.95


def run_once(
    server: str, tree: harness.Tree, *, lines: int, profile_to: str | None = None
) -> float:
    """Start ``server`` of ``tree``, run the generator against it, stop it; lines per second."""
    with harness.children() as started:
        process = harness.Server(server, tree, profile_to=profile_to)
        started.append(process)
        measured = harness.run_json(harness.flood_command(process.tcp_port, lines=lines))
    return float(measured["lines"]) / float(measured["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    harness.add_arguments(
        parser, quick=f"{QUICK_LINES:,} lines per client", repeats="repeats per server (3)"
    )
    parser.add_argument("--servers", default="asyncio,trio,sync")
    parser.add_argument("--lines", type=int, default=LINES, help="lines per client")
    parser.add_argument("--profile", metavar="SERVER", help="profile one run of SERVER")
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_AFTER_OVER_BEFORE,
        metavar="RATIO",
        help="with --compare: asyncio and trio must reach RATIO x their medians before "
        f"(default {TARGET_AFTER_OVER_BEFORE})",
    )
    args = parser.parse_args()
    lines = QUICK_LINES if args.quick else args.lines
    repeats = args.repeats or 3
    measured = harness.trees(args.compare)
    if args.profile:
        with harness.profile_path() as path:
            rate = run_once(args.profile, measured[0], lines=lines, profile_to=path)
            harness.log(f"{args.profile}: {rate:,.0f} lines/s (under cProfile)")
            harness.print_profile(path, ("tottime",), 25)
        return
    servers = [name for name in args.servers.split(",") if name]
    if "sync" in servers and not all(tree.provides("logatron_sync.__main__") for tree in measured):
        harness.log("sync: skipped (logatron_sync has no command yet)")
        servers.remove("sync")
    summaries: dict[str, harness.Json] = {tree.label: {} for tree in measured}
    for server in servers:
        runs = harness.interleave(
            measured,
            repeats,
            functools.partial(run_once, server, lines=lines),
            lambda rate: f"{rate:,.0f} lines/s",
            f"{server} repeat",
        )
        for label, rates in runs.items():
            summaries[label][f"{server}_lines_per_s"] = round(statistics.median(rates))
            summaries[label][f"{server}_best_lines_per_s"] = round(max(rates))
    must_hold: list[tuple[str, bool]] = []
    if args.compare:
        after, before = summaries["after"], summaries["before"]
        for server in [name for name in servers if name != "sync"]:
            key = f"{server}_lines_per_s"
            met = after[key] >= args.target * before[key]
            must_hold.append((f"{server} after >= {args.target}x before", met))
    settings = {
        "clients": harness.CLIENTS,
        "lines_per_client": lines,
        "line_bytes": harness.LINE_BYTES,
        "repeats": repeats,
        "quick": args.quick,
    }
    harness.emit(measured, summaries, settings, must_hold)


if __name__ == "__main__":
    main()
