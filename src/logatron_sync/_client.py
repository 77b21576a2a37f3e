"""A blocking client: a socket driven by :class:`logatron_core.ClientConnection`.

The core encodes every line (a multi-line message becomes several ``LOG`` lines) and parses
the server's replies; this module only sends those bytes and reads replies when it waits for a
``PONG``. Replies are read only then (and on close), so the cost of ``log()`` is one ``sendall``.
"""

import itertools
import socket
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from logatron_core import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    ErrorReply,
    Identify,
    Log,
    LogatronError,
    Ping,
    Pong,
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
    within ``timeout`` seconds, and ServerRefused when it refuses the name.

    Non-fatal ``ERR`` replies (``too-many-keys``, ``line-too-long`` …) are read while waiting
    for a ``PONG`` and collected in :attr:`errors`. ``timeout`` bounds connecting, each send and
    each wait for a ``PONG``.
    """

    def __init__(
        self, name: str, host: str = "127.0.0.1", port: int = 2212, *, timeout: float = 10.0
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.errors: list[ErrorReply] = []
        self._connection = ClientConnection()
        identify = self._connection.send(Identify(name))  # validates the name first
        self._tokens = itertools.count(1)
        self._refusal: ServerRefused | None = None
        self._ended = False  # the server closed its side
        self._sock: socket.socket | None = None
        sock = socket.create_connection((host, port), timeout=timeout)
        self._sock = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(identify)
            self.ping()
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._sock is None

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
        token = f"{next(self._tokens)}"
        self._send(self._connection.send(Ping(token)))
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        sock = self._require_socket()
        while True:
            event = self._connection.next_event()
            if event is NEED_DATA:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no PONG from the server within {wait} s")
                sock.settimeout(remaining)
                try:
                    data = sock.recv(_RECV_BYTES)
                except TimeoutError:
                    raise TimeoutError(f"no PONG from the server within {wait} s") from None
                except ConnectionResetError:
                    data = b""
                finally:
                    sock.settimeout(self.timeout)
                self._receive(data)
            elif isinstance(event, Pong):
                if event.token == token:
                    return
                # the answer to an earlier ping that timed out
            elif isinstance(event, ErrorReply):
                self._on_error(event)
            else:
                assert isinstance(event, ConnectionClosed)
                if self._refusal is not None:
                    raise self._refusal
                raise ConnectionError("the server closed the connection")

    def close(self) -> None:
        """Close the connection (idempotent). Replies already received are read first (their
        errors land in :attr:`errors`), so that closing never resets the connection and
        loses lines the server has yet to read.
        """
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.setblocking(False)
            while not self._ended:
                self._receive(sock.recv(_RECV_BYTES))
                self._drain_events()
        except (OSError, LogatronError):
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
        if self._refusal is not None:
            raise self._refusal
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

    def _on_error(self, error: ErrorReply) -> None:
        if error.code.fatal:
            self._refusal = ServerRefused(error.code, error.text)
            raise self._refusal
        self.errors.append(error)

    def _drain_events(self) -> None:
        """Read the replies already parsed (raises ServerRefused for a fatal one)."""
        while True:
            event = self._connection.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                return
            if isinstance(event, ErrorReply):
                self._on_error(event)

    def _notice_refusal(self) -> None:
        """After a failed send: raise ServerRefused (from the failure) if the server's last
        words were a fatal ``ERR``."""
        sock = self._sock
        if sock is None:
            return
        try:
            sock.setblocking(False)
            while not self._ended:
                self._receive(sock.recv(_RECV_BYTES))
        except OSError:
            pass
        finally:
            sock.settimeout(self.timeout)
        self._drain_events()
