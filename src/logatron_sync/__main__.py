"""``python -m logatron_sync``: run the blocking-socket server in the foreground.

It prints one line saying where it listens and serves until Ctrl-C or SIGTERM, then closes every
connection and exits 0.
"""

import argparse
import signal
import sys
from types import FrameType

from logatron_core import DEFAULT_BUFFER_SIZE, MAX_LINE_BYTES, Registry

from ._server import LogatronServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m logatron_sync", description="The Logatron server on blocking sockets."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=2212, help="TCP port (0: any free port)")
    parser.add_argument(
        "--buffer-size", type=int, default=DEFAULT_BUFFER_SIZE, help="lines kept per client"
    )
    parser.add_argument(
        "--max-line-bytes", type=int, default=MAX_LINE_BYTES, help="longest line, in bytes"
    )
    args = parser.parse_args(argv)
    try:
        registry = Registry(buffer_size=args.buffer_size)
        server = LogatronServer(
            args.host, args.port, registry=registry, max_line_bytes=args.max_line_bytes
        )
    except (OSError, ValueError) as error:
        print(f"logatron_sync: {error}", file=sys.stderr)
        return 1

    stopped = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True
        server.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    print(f"logatron_sync listening on {shown}:{port}", flush=True)
    try:
        server.serve_forever()
    except RuntimeError:
        if not stopped:  # a signal that came before the loop started stops it too
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
