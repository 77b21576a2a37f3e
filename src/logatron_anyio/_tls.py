"""TLS on anyio: the servers' handshake at accept, bounded in time, and the client side's.

A server with an ``ssl.SSLContext`` hands each accepted connection to :func:`tls_handler`'s
wrapper, which runs the handshake (``_tlsstream.ServerTLSStream``, the same on asyncio and
trio) in that connection's own task, within ``handshake_timeout``; only then does the
server's usual handler see the connection, as a ``ServerTLSStream``. Clients use anyio's
``TLSStream``. A peer that sends plain text or garbage fails the handshake at once, one that
sends nothing is closed at the deadline: either way it is logged with its address and costs
the other connections nothing.

Streams skip TLS's closing handshake (``standard_compatible=False``): both protocols here
frame their own messages (lines; HTTP's lengths), and a peer that vanishes must not hold a
close.

The contexts themselves are built by ``logatron_sync._tls`` (standard library only), which
both adapters share.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from logatron_sync._tls import (
    HANDSHAKE_TIMEOUT_SECONDS,
    client_context,
    peer_names,
    server_context,
)

from ._tlsstream import ServerTLSStream

__all__ = [
    "HANDSHAKE_TIMEOUT_SECONDS",
    "client_context",
    "connect_stream",
    "peer_address",
    "peer_names_of",
    "server_context",
    "tls_handler",
    "wrap_client",
]

Handler = Callable[[anyio.abc.ByteStream], Coroutine[Any, Any, None]]


def peer_address(stream: anyio.abc.ByteStream) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of the stream's peer; ``?`` if unknown."""
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
    except OSError:  # the peer is gone already
        address = None
    if not isinstance(address, tuple):
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_handler(
    handle: Handler,
    context: ssl.SSLContext,
    log: logging.Logger,
    timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
) -> Callable[[anyio.abc.SocketStream], Coroutine[Any, Any, None]]:
    """A connection handler that completes the TLS handshake (within ``timeout`` seconds),
    then calls ``handle`` with the TLS stream; a failed handshake is logged and closed."""

    async def handle_tls(stream: anyio.abc.SocketStream) -> None:
        try:
            with anyio.fail_after(timeout):
                wrapped = await ServerTLSStream.accept(stream, context)
        except (TimeoutError, ssl.SSLError, OSError, anyio.BrokenResourceError) as error:
            await _handshake_failed(stream, error, log)
            return
        except anyio.EndOfStream:
            await _handshake_failed(stream, EOFError("the peer closed"), log)
            return
        except BaseException:  # cancelled (the server is stopping)
            await anyio.aclose_forcefully(stream)
            raise
        await handle(wrapped)

    return handle_tls


async def _handshake_failed(
    stream: anyio.abc.SocketStream, error: BaseException, log: logging.Logger
) -> None:
    peer = peer_address(stream)
    reason = "no handshake in time" if isinstance(error, TimeoutError) else str(error)
    log.info(
        "TLS handshake from %s failed: %s",
        peer,
        reason,
        extra={"event": "tls-handshake-failed", "peer": peer, "error": reason},
    )
    await anyio.aclose_forcefully(stream)


def peer_names_of(stream: anyio.abc.ByteStream) -> frozenset[str] | None:
    """The names of the peer's verified client certificate (None: no TLS, or no client
    certificates asked for)."""
    return peer_names(stream.extra(TLSAttribute.ssl_object, None))


async def connect_stream(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> anyio.abc.ByteStream:
    """A TCP connection to ``host``:``port``, over TLS when ``ssl_context`` is given (the
    server's certificate checked against ``server_hostname``, by default ``host``). Raises
    OSError when it cannot connect: ssl.SSLError (ssl.SSLCertVerificationError for a
    certificate it does not trust), ConnectionError if the server closes during the
    handshake."""
    stream = await anyio.connect_tcp(host, port)
    if ssl_context is None:
        return stream
    return await wrap_client(stream, ssl_context, server_hostname or host)


async def wrap_client(
    stream: anyio.abc.ByteStream, ssl_context: ssl.SSLContext, hostname: str
) -> TLSStream:
    """The client's side of a TLS handshake over ``stream`` (closed if it fails), the
    server's certificate checked against ``hostname``. Raises as :func:`connect_stream`."""
    try:
        return await TLSStream.wrap(
            stream, hostname=hostname, ssl_context=ssl_context, standard_compatible=False
        )
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        await anyio.aclose_forcefully(stream)
        raise ConnectionError("the server closed the connection during the TLS handshake") from None
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
