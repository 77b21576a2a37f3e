"""The status page with a fleet: how soon a page of 1,000 clients is painted, in real headless
Chromium (``tests/browser.py``, ``/usr/bin/chromium``).

The server (``python -m logatron_anyio serve``, ``harness.Server``) runs in its own process; this
script connects 1,000 clients over TCP (700 stay connected, 300 leave and are retained), each
with LINES lines and two state keys, then opens the page REPEATS times, each in a new tab, and
reads from the page (times from the navigation's start, ``performance.now()``):

- ``fcp_ms``: the first contentful paint (the page's shell: header and empty panes);
- ``table_ms``: the first frame painted after the table of every client was drawn
  (``window.logatronTimings.table``: the ``api/clients`` and ``metrics`` answers fetched,
  parsed and drawn). Target: under 1,000 ms.

Prints each repeat on stderr and, as its last stdout line, one JSON object with the medians.

    python benchmarks/bench_page.py [--clients 1000] [--repeats 5] [--backend asyncio]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import harness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import Browser, Page

LINES = 20
TARGET_TABLE_MS = 1000.0
TIMEOUT = 30.0


def feed(port: int, count: int) -> list[socket.socket]:
    """``count`` clients, 70% left connected (their sockets returned), the rest retained."""
    connected: list[socket.socket] = []
    for number in range(count):
        name = f"client-{number:04d}"
        sock = socket.create_connection((harness.HOST, port), timeout=TIMEOUT)
        lines = "".join(f"LOG {name} did step {i} of its work\n" for i in range(LINES))
        hello = f"IAM {name}\nSET version 1.{number % 7}\nSET role worker\n{lines}PING\n"
        sock.sendall(hello.encode())
        harness.read_reply(sock)
        if number < count * 3 // 10:
            sock.close()
        else:
            connected.append(sock)
    return connected


def load(page: Page, url: str, clients: int) -> dict[str, float]:
    """Open the page in ``page`` and wait for every row: its two timings."""
    page.navigate(url)
    rows = f"document.querySelectorAll('#clients tbody tr').length === {clients}"
    page.wait_for(lambda: page.evaluate(rows), "every row", TIMEOUT)
    table = page.wait_for(
        lambda: page.evaluate("window.logatronTimings.table"), "the timing", TIMEOUT
    )
    fcp = page.evaluate(
        "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
    )
    return {"table_ms": float(table), "fcp_ms": float(fcp or 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args()
    tree = harness.trees(None)[0]
    results: list[dict[str, float]] = []
    with harness.children() as started, tempfile.TemporaryDirectory() as tmp:
        server = harness.Server(args.backend, tree, with_http=True)
        started.append(server)
        sockets = feed(server.tcp_port, args.clients)
        with Browser(Path(tmp) / "profile", Path(tmp) / "chromium.log") as browser:
            for repeat in range(1, args.repeats + 1):
                page = browser.new_page()
                result = load(page, f"http://{harness.HOST}:{server.http_port}/", args.clients)
                harness.log(
                    f"{args.clients} clients, repeat {repeat}/{args.repeats}: table painted at "
                    f"{result['table_ms']:.0f} ms, first contentful paint {result['fcp_ms']:.0f} ms"
                )
                results.append(result)
                page.call("Page.navigate", {"url": "about:blank"})  # its polls stop
                time.sleep(0.2)
        for sock in sockets:
            sock.close()
    table_ms = harness.median(results, "table_ms")
    summary = {
        "clients": args.clients,
        "backend": args.backend,
        "repeats": args.repeats,
        "table_ms": round(table_ms),
        "fcp_ms": round(harness.median(results, "fcp_ms")),
        "must_hold": {f"table painted under {TARGET_TABLE_MS:.0f} ms": table_ms < TARGET_TABLE_MS},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
