"""Many concurrent clients in a process of their own: the 10,000-client scenario of the tests
(one process could not hold both sides of 10,000 connections under a 20,000 descriptor limit)
and the load of ``benchmarks/bench_memory.py``.

    python tests/many_clients.py PORT COUNT [--lines L] [--prefix NAME]

Client ``i`` connects to 127.0.0.1:PORT and sends, in one write, ``IAM <prefix><i>``, L
64-byte lines ``LOG hello <i> ...`` (default 1) and ``PING <i>``; clients connect in batches of
BATCH whose ``PONG``s are awaited before the next batch connects (below any listen backlog).
Once every client has its ``PONG`` it prints ``ready COUNT`` and keeps every connection open
until its stdin ends, then closes them and exits. A wrong reply, a closed connection or a wait
over TIMEOUT seconds ends it with an error on stderr (exit code 1). It raises its own
``RLIMIT_NOFILE`` as far as the hard limit allows.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import sys
import time

BATCH = 500
TIMEOUT = 60.0
LINE_BYTES = 64


def message(index: int) -> bytes:
    """Client ``index``'s LOG line, LINE_BYTES long with its newline."""
    return (b"LOG hello %d " % index).ljust(LINE_BYTES - 1, b".") + b"\n"


def connect_batch(port: int, names: range, lines: int, prefix: str) -> list[socket.socket]:
    """Clients ``names`` connected, each once it has its ``PONG``."""
    socks = []
    for index in names:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        iam = f"IAM {prefix}{index}\n".encode()
        sock.sendall(iam + message(index) * lines + b"PING %d\n" % index)
        socks.append(sock)
    waiting = {sock: (index, b"") for index, sock in zip(names, socks, strict=True)}
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(waiting)} clients got no PONG in {TIMEOUT} s")
            for key, _ in selector.select(timeout=1.0):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                index, got = waiting[ready]
                data = ready.recv(4096)
                if not data:
                    raise SystemExit(f"the server closed client {prefix}{index}")
                got += data
                if not got.endswith(b"\n"):
                    waiting[ready] = (index, got)
                    continue
                if got != b"PONG %d\n" % index:
                    raise SystemExit(f"client {prefix}{index} got {got!r}")
                selector.unregister(ready)
                del waiting[ready]
    return socks


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--lines", type=int, default=1, help="LOG lines per client")
    parser.add_argument("--prefix", default="c", help="names are PREFIX0, PREFIX1, ...")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.count + 100
    if soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    socks: list[socket.socket] = []
    try:
        for first in range(0, args.count, BATCH):
            names = range(first, min(first + BATCH, args.count))
            socks += connect_batch(args.port, names, args.lines, args.prefix)
        print(f"ready {len(socks)}", flush=True)
        sys.stdin.read()
    finally:
        for sock in socks:
            sock.close()


if __name__ == "__main__":
    main()
