"""``python -m logatron_sync``: run the blocking-socket server in the foreground.

It prints one line saying where it listens and serves until Ctrl-C or SIGTERM, then closes every
connection and exits 0. ``--tls-cert``/``--tls-key`` (``--tls-client-ca``) and ``--token`` or
``--auth-file`` work as for ``logatron serve`` (whose auth file reader, in ``logatron_anyio``,
is imported only when one is given).
"""

import argparse
import signal
import ssl
import sys
from types import FrameType

from logatron_core import DEFAULT_BUFFER_SIZE, MAX_LINE_BYTES, Authorizer, Registry

from ._server import LogatronServer
from ._tls import server_context


def _access(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, Authorizer]:
    """The TLS context and the access policy the options ask for. Raises OSError,
    ssl.SSLError or ValueError (the auth file's AuthFileError) for files it cannot use."""
    context = None
    if args.tls_cert:
        context = server_context(args.tls_cert, args.tls_key, client_ca=args.tls_client_ca)
    authorizer = Authorizer.single_token(args.token) if args.token else Authorizer()
    if args.auth_file:
        from logatron_anyio._auth import load_auth_file

        authorizer = authorizer + load_auth_file(args.auth_file)
    return context, authorizer


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
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS: the server's certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS: its private key (PEM)")
    parser.add_argument("--tls-client-ca", metavar="FILE", help="TLS: require client certificates")
    parser.add_argument("--token", help="a token that may identify as any name")
    parser.add_argument("--auth-file", metavar="FILE", help="tokens with scopes (TOML)")
    args = parser.parse_args(argv)
    if (args.tls_key or args.tls_client_ca) and not args.tls_cert:
        parser.error("--tls-key and --tls-client-ca go with --tls-cert")
    try:
        context, authorizer = _access(args)
        registry = Registry(buffer_size=args.buffer_size)
        server = LogatronServer(
            args.host,
            args.port,
            registry=registry,
            max_line_bytes=args.max_line_bytes,
            ssl_context=context,
            authorizer=authorizer,
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
    tls = "for TLS clients " if context is not None else ""
    print(f"logatron_sync listening {tls}on {shown}:{port}", flush=True)
    try:
        server.serve_forever()
    except RuntimeError:
        if not stopped:  # a signal that came before the loop started stops it too
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
