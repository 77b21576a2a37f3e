"""One peer of the sync server: its non-blocking socket (plain or TLS), its ``Session``, the
replies being written, and what the selector watches for it. The server's loop decides when
to call each method; a channel never blocks.

TLS: the socket is wrapped at accept without a handshake, and :meth:`Channel.handshake` takes
it one step further on each event, selecting the socket for what ``SSLWantReadError`` or
``SSLWantWriteError`` ask. A TLS socket can hold decrypted bytes that ``select`` does not
see: :meth:`Channel.receive` takes records until ``recv_bytes`` or until the socket would
block, and says (``more``) when it must be read again before the loop sleeps. A write that
TLS could not finish is offered again with the same bytes, as OpenSSL requires.
"""

from __future__ import annotations

import selectors
import socket
import ssl
from typing import Any, Final

from logatron_core import Session

from ._tls import peer_names

__all__ = ["RECV_BYTES", "Channel", "format_address"]

# One recv takes up to this much: large reads mean few syscalls and long runs of lines per
# session call, which is where the core is fastest.
RECV_BYTES: Final = 256 * 1024
# When a connection ends, at most this much unread input is drained before it is closed (a
# close with unread input sends a reset, which can destroy the ERR reply the peer has yet to read).
_DRAIN_BYTES: Final = 64 * 1024
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def format_address(address: Any) -> str:
    """``host:port`` of a socket address, ``[host]:port`` for IPv6."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Channel:
    """A peer's socket and session. ``deadline`` (monotonic) is when its TLS handshake must be
    done, None once it is (or without TLS); ``more`` is true when a TLS socket holds input
    that ``select`` will not announce."""

    __slots__ = (
        "deadline",
        "more",
        "out",
        "peer",
        "recv_bytes",
        "selector",
        "session",
        "sock",
        "writing",
    )

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        peer: str,
        selector: selectors.BaseSelector,
        deadline: float | None = None,
    ) -> None:
        self.sock = sock
        self.session = session
        self.peer = peer
        self.selector = selector
        self.deadline = deadline
        self.recv_bytes = RECV_BYTES  # adapted to the cost of this peer's input
        self.out = b""  # replies taken from the session, not yet all written
        self.writing = False  # selected for writing as well as reading
        self.more = False
        selector.register(sock, selectors.EVENT_READ, self)

    def handshake(self) -> bool:
        """One step of the TLS handshake: True once it is done (the session then has the
        certificate's names), False while it waits for the peer. Raises OSError (ssl.SSLError)
        when it fails."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.selector.modify(sock, selectors.EVENT_READ, self)
            return False
        except ssl.SSLWantWriteError:
            self.selector.modify(sock, selectors.EVENT_WRITE, self)
            return False
        self.deadline = None
        self.session.certificate_names = peer_names(sock)
        self.selector.modify(sock, selectors.EVENT_READ, self)
        return True

    def receive(self) -> bytes | None:
        """What the peer sent, up to ``recv_bytes``: b"" at its end, None if nothing now."""
        sock, limit = self.sock, self.recv_bytes
        self.more = False
        if not isinstance(sock, ssl.SSLSocket):
            try:
                return sock.recv(limit)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:  # ConnectionResetError and the like: the peer is gone
                return b""
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            try:
                chunk = sock.recv(limit - size)
            except _WOULD_BLOCK:
                break
            except OSError:  # a broken record, a reset: the end
                chunk = b""
            if not chunk:
                if not chunks:
                    return b""
                self.more = True  # the end, said by the next read
                break
            chunks.append(chunk)
            size += len(chunk)
        self.more = self.more or sock.pending() > 0
        return b"".join(chunks) if chunks else None

    def write(self) -> None:
        """Write what was taken from the session, then what waits there, without blocking;
        select the socket for writing while some remains."""
        while True:
            out = self.out or self.session.data_to_send()
            if not out:
                break
            try:
                sent = self.sock.send(out)
            except _WOULD_BLOCK:
                sent = 0  # TLS: the same bytes are offered again, as OpenSSL requires
            except OSError:
                self.out = b""  # the peer is gone; reading will tell the session
                break
            self.out = out[sent:]
            if self.out:
                break
        writing = bool(self.out)
        if writing != self.writing:
            self.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.selector.modify(self.sock, events, self)

    def close(self) -> None:
        """Stop selecting the socket, flush what can be sent without waiting, close it."""
        sock = self.sock
        self.writing = False
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            out = self.out + self.session.data_to_send()
            if out:
                sock.send(out)
            sock.shutdown(socket.SHUT_WR)
            drained = 0
            while drained < _DRAIN_BYTES:
                chunk = sock.recv(_DRAIN_BYTES)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        finally:
            sock.close()
