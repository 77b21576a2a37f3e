"""A blocking client: a socket driven by :class:`logatron_core.ClientConnection`.

The core encodes every line (a multi-line message becomes several ``LOG`` lines), parses the
server's replies and keeps the client's state (PONG tokens answered, refusal, kept errors);
this module only sends those bytes and reads replies when it waits for a ``PONG``. Replies are
read only then (and on close), so the cost of ``log()`` is one ``sendall``.
"""

import socket
import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from logatron_core import (
    ClientConnection,
    ErrorReply,
    Identify,
    Log,
    LogatronError,
    ServerRefused,
    SetState,
)

__all__ = ["LogatronClient", "ServerRefused"]

_RECV_BYTES = 64 * 1024


class LogatronClient:
    """A blocking connection to a Logatron server, identified as ``name``.

    The constructor connects, sends ``IAM name`` and waits for a ``PONG`` so that a refusal is
    noticed at once. It raises LocalProtocolError (a ValueError) for an invalid name before
    connecting, OSError when the server cannot be reached, TimeoutError when it does not answer
    within ``timeout`` seconds, ServerRefused when it refuses the name, and RemoteProtocolError
    when what answers is not a Logatron server (an HTTP port, say: that answers at once).

    Non-fatal ``ERR`` replies (``too-many-keys``, ``line-too-long`` …) are read while waiting
    for a ``PONG`` and collected in :attr:`errors`. ``timeout`` bounds connecting, each send and
    each wait for a ``PONG``.

    ``token`` is sent with ``IAM`` to a server that needs one (ServerRefused ``unauthorized``
    otherwise). With ``ssl_context`` (``logatron_sync._tls.client_context`` makes one from a CA
    file) the connection is TLS, the server's certificate checked against ``server_hostname``
    (default: ``host``); a certificate it does not trust raises ssl.SSLCertVerificationError.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 2212,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self._connection = ClientConnection()
        # Validates the name and token first; the token is not kept anywhere else.
        identify = self._connection.send(Identify(name, token or ""))
        self._ended = False  # the server closed its side
        self._sock: socket.socket | None = None
        sock = socket.create_connection((host, port), timeout=timeout)
        self._sock = sock
        try:
            if ssl_context is not None:
                sock = self._sock = ssl_context.wrap_socket(
                    sock, server_hostname=server_hostname or host
                )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The blank line after IAM (ignored by a Logatron server) ends the head of what an
            # HTTP server takes for a request, so that one answers at once and is told from a
            # Logatron server, instead of waiting for the rest of its headers.
            sock.sendall(identify + b"\n")
            self.ping()
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def errors(self) -> list[ErrorReply]:
        """The non-fatal ``ERR`` replies read so far (the latest ``MAX_KEPT_ERRORS``)."""
        return list(self._connection.errors)

    def log(self, message: str) -> None:
        """Send ``message``; each of its lines becomes one ``LOG`` line.

        Raises ServerRefused if the server refused this connection, OSError (ConnectionError,
        TimeoutError) when sending fails, RuntimeError after :meth:`close`.
        """
        self._send(self._connection.send(Log((message,))))

    def log_many(self, messages: Iterable[str]) -> None:
        """Send several messages with one ``sendall``; raises what :meth:`log` raises."""
        self._send(self._connection.send(Log(tuple(messages))))

    def set(self, key: str, value: str) -> None:
        """Send ``SET key value``.

        Raises LocalProtocolError (nothing sent) for an invalid key or a value with a line
        break, and what :meth:`log` raises.
        """
        self._send(self._connection.send(SetState(key, value)))

    def ping(self, timeout: float | None = None) -> None:
        """Send ``PING`` with a fresh token and wait for its ``PONG``: once it returns, the
        server has applied every line sent before.

        Raises TimeoutError when no ``PONG`` comes within ``timeout`` seconds (the client's
        ``timeout`` by default), ServerRefused when the server refused this connection,
        ConnectionError when it closed the connection, RemoteProtocolError for a reply that is
        neither ``PONG`` nor a known ``ERR``, RuntimeError after :meth:`close`.
        """
        connection = self._connection
        token, data = connection.ping()
        self._send(data)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        sock = self._require_socket()
        while True:
            connection.handle_replies()
            if connection.pong_received(token):
                return  # answered, even if a refusal followed (the next call raises it)
            if connection.refusal is not None:
                raise connection.refusal
            if connection.server_closed:
                raise ConnectionError("the server closed the connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                connection.forget_ping(token)
                raise TimeoutError(f"no PONG from the server within {wait} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(_RECV_BYTES)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            finally:
                sock.settimeout(self.timeout)
            self._receive(data)

    def close(self) -> None:
        """Close the connection (idempotent). Replies already received are read first (their
        errors land in :attr:`errors`), so that closing never resets the connection and
        loses lines the server has yet to read.
        """
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            self._read_available(sock)
            self._connection.handle_replies()
        except LogatronError:
            pass
        finally:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _require_socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("the client is closed")
        return self._sock

    def _send(self, data: bytes) -> None:
        if self._connection.refusal is not None:
            raise self._connection.refusal
        sock = self._require_socket()
        try:
            sock.sendall(data)
        except OSError:
            self._notice_refusal()
            raise

    def _receive(self, data: bytes) -> None:
        if not self._ended:
            self._ended = not data
            self._connection.receive_data(data)

    def _handle_replies(self) -> None:
        """Apply the replies read so far; raises ServerRefused once the server refused."""
        self._connection.handle_replies()
        if self._connection.refusal is not None:
            raise self._connection.refusal

    def _notice_refusal(self) -> None:
        """After a failed send: raise ServerRefused (from the failure) if the server's last
        words were a fatal ``ERR``."""
        sock = self._sock
        if sock is None:
            return
        self._read_available(sock)
        sock.settimeout(self.timeout)
        self._handle_replies()

    def _read_available(self, sock: socket.socket) -> None:
        """Read what the server has sent, without waiting (leaves the socket non-blocking)."""
        try:
            sock.setblocking(False)
            while not self._ended:
                self._receive(sock.recv(_RECV_BYTES))
        except OSError:
            pass
