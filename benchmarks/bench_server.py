"""Server throughput over TCP: 4 clients each send IAM, N 64-byte LOG lines, then PING.

For each server (anyio on asyncio, anyio on trio, and the sync server if the tree has its
command) the server runs in its own process (its command with ``--port 0``, TCP only; the port
read from its startup line), and the load generator in another (``harness.flood_command``: 4
threads, one blocking socket each, sending 1 MiB ``sendall`` chunks). The time runs from the
first byte sent to the last ``PONG`` received, so every line is counted only once the server
has applied it. Prints one rate per server and repeat, then, as its last line, one JSON object
with the median (and best) rate of each server. ``--compare SRC`` measures another tree in the
same run, repeats interleaved. ``--tls`` measures every server over TLS too (a certificate made
with ``trustme``), each repeat a plain run and a TLS run back to back, their order swapped
every other repeat, and prints each server's TLS/plain ratio of medians, of throughput and of
the server's CPU time per line (from /proc: less sensitive to a busy machine).

    python benchmarks/bench_server.py [--quick] [--repeats N] [--servers asyncio,trio,sync]
    python benchmarks/bench_server.py --repeats 5 --compare /work/before/src [--target 1.2]
    python benchmarks/bench_server.py --tls --repeats 7
    python benchmarks/bench_server.py --profile trio    # cProfile of the server, to stderr
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import harness

LINES = 250_000
QUICK_LINES = 50_000
# Issue 7: asyncio and trio within 5% of their medians before a restructuring (the default of
# --target); issue 11 asked for a rise: --target 1.2.
TARGET_AFTER_OVER_BEFORE = 0.95
# Issue 10: ingest over TLS at least 0.6x plain TCP.
TARGET_TLS_OVER_PLAIN = 0.6


def run_once(
    server: str, tree: harness.Tree, *, lines: int, profile_to: str | None = None
) -> float:
    """Start ``server`` of ``tree``, run the generator against it, stop it; lines per second."""
    return run_measured(server, tree, lines=lines, profile_to=profile_to)[0]


def run_measured(
    server: str,
    tree: harness.Tree,
    *,
    lines: int,
    profile_to: str | None = None,
    tls: harness.TlsFiles | None = None,
) -> tuple[float, float]:
    """``run_once``, over TLS with ``tls``: (lines per second, the server's CPU seconds per
    million lines, 0.0 where /proc cannot tell)."""
    extra = () if tls is None else tls.server_options
    with harness.children() as started:
        process = harness.Server(server, tree, profile_to=profile_to, extra=extra)
        started.append(process)
        flood = harness.flood_command(
            process.tcp_port, lines=lines, tls_ca=None if tls is None else tls.ca
        )
        measured = harness.run_json(flood)
        try:
            cpu = process.cpu_seconds() * 1e6 / float(measured["lines"])
        except RuntimeError:
            cpu = 0.0
    return float(measured["lines"]) / float(measured["seconds"]), cpu


Pair = tuple[tuple[float, float], tuple[float, float]]


def plain_and_tls(server: str, tls: harness.TlsFiles, lines: int) -> Callable[[harness.Tree], Pair]:
    """A measure for ``harness.interleave``: a plain run and a TLS run of ``server``, back to
    back, the TLS one first every other call; returns ``run_measured``'s (rate, CPU per
    million lines) of the plain run, then of the TLS run."""
    calls = itertools.count()

    def measure(tree: harness.Tree) -> Pair:
        first_plain = next(calls) % 2 == 0
        order = (None, tls) if first_plain else (tls, None)
        runs = {setting: run_measured(server, tree, lines=lines, tls=setting) for setting in order}
        return runs[None], runs[tls]

    return measure


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
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also measure every server over TLS, interleaved with plain TCP (TLS/plain ratio)",
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
    must_hold: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory() as directory:
        tls = harness.tls_files(Path(directory)) if args.tls else None
        for server in servers:
            if tls is None:
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
                continue
            pairs = harness.interleave(
                measured,
                repeats,
                plain_and_tls(server, tls, lines),
                lambda pair: (
                    f"plain {pair[0][0]:,.0f} lines/s ({pair[0][1]:.3f} CPU s/M lines), "
                    f"TLS {pair[1][0]:,.0f} lines/s ({pair[1][1]:.3f} CPU s/M lines)"
                ),
                f"{server} repeat",
            )
            for label, runs_of_tree in pairs.items():
                plain = statistics.median(pair[0][0] for pair in runs_of_tree)
                over_tls = statistics.median(pair[1][0] for pair in runs_of_tree)
                plain_cpu = statistics.median(pair[0][1] for pair in runs_of_tree)
                tls_cpu = statistics.median(pair[1][1] for pair in runs_of_tree)
                summary = summaries[label]
                summary[f"{server}_lines_per_s"] = round(plain)
                summary[f"{server}_tls_lines_per_s"] = round(over_tls)
                summary[f"{server}_tls_over_plain"] = round(over_tls / plain, 3)
                if plain_cpu:
                    summary[f"{server}_cpu_s_per_m_lines"] = round(plain_cpu, 4)
                    summary[f"{server}_tls_cpu_s_per_m_lines"] = round(tls_cpu, 4)
                    summary[f"{server}_tls_cpu_over_plain"] = round(tls_cpu / plain_cpu, 3)
                ratios = ", ".join(f"{pair[1][0] / pair[0][0]:.2f}" for pair in runs_of_tree)
                harness.log(f"[{label}] {server} TLS/plain per repeat: {ratios}")
                must_hold.append(
                    (
                        f"[{label}] {server} TLS >= {TARGET_TLS_OVER_PLAIN}x plain",
                        over_tls >= TARGET_TLS_OVER_PLAIN * plain,
                    )
                )
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
        "tls": args.tls,
    }
    harness.emit(measured, summaries, settings, must_hold)


if __name__ == "__main__":
    main()
