"""One peer of the sync server: its non-blocking socket, its ``Session``, the bytes being
written, TLS when the server has it, and what the selector watches for it. The server's loop
decides when to call each method; a channel never blocks.

TLS runs on memory BIOs (``ssl.SSLObject``), as anyio's does, not on an ``ssl.SSLSocket``: the
socket is read with one large ``recv`` as without TLS, and every record that came whole is
decrypted at once, so no input ever waits inside the TLS layer where ``select`` cannot see it
(an ``SSLSocket`` makes two ``recv`` calls per 16 KiB record, and hides what it has read).
What TLS has to send (the handshake, encrypted replies) joins ``out``, the bytes being
written; :meth:`Channel.handshake` takes the handshake one step further on each event.
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
# The most one TLS record carries (RFC 8446, 5.1): what each decryption asks for (a read
# allocates all it asks for, and returns at most one record).
_TLS_RECORD_BYTES: Final = 16 * 1024


def format_address(address: Any) -> str:
    """``host:port`` of a socket address, ``[host]:port`` for IPv6."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Channel:
    """A peer's socket and session. With ``ssl_context`` the peer speaks TLS, and
    ``deadline`` (monotonic) is when its handshake must be done (None once it is)."""

    __slots__ = (
        "_incoming",
        "_outgoing",
        "deadline",
        "ended",
        "out",
        "peer",
        "recv_bytes",
        "selector",
        "session",
        "sock",
        "tls",
        "writing",
    )

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        peer: str,
        selector: selectors.BaseSelector,
        ssl_context: ssl.SSLContext | None = None,
        deadline: float | None = None,
    ) -> None:
        self.sock = sock
        self.session = session
        self.peer = peer
        self.selector = selector
        self.deadline = deadline
        self.recv_bytes = RECV_BYTES  # adapted to the cost of this peer's input
        self.out = b""  # bytes for the socket (encrypted, with TLS), not yet all written
        self.writing = False  # selected for writing as well as reading
        # The peer's end (a TLS close_notify) came with the bytes receive() returned last: no
        # select event will say so again, so the next receive() returns b"" at once.
        self.ended = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None
        if ssl_context is not None:
            self.tls = ssl_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        selector.register(sock, selectors.EVENT_READ, self)

    def handshake(self) -> bool:
        """One step of the TLS handshake with what the peer has sent: True once it is done
        (the session then has the certificate's names), False while it waits for the peer.
        Raises OSError (ssl.SSLError) when it fails or the peer leaves."""
        tls = self.tls
        assert tls is not None
        raw = self._recv(self.recv_bytes)
        if raw == b"":
            raise ConnectionError("the peer closed during the handshake")
        if raw:
            self._incoming.write(raw)
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        finally:
            self.out += self._outgoing.read()  # our part of the handshake, or an alert
            self.write()
        if done:
            self.deadline = None
            self.session.certificate_names = peer_names(tls)
        return done

    def receive(self) -> bytes | None:
        """What the peer sent, up to ``recv_bytes`` read from the socket: b"" at its end,
        None if nothing now. Over TLS, every record that has come whole, decrypted (some may
        have come with the handshake; a broken record counts as the end); when the end came
        right after them, ``ended`` is set and the next call returns b"" without reading."""
        if self.ended:
            return b""
        raw = self._recv(self.recv_bytes)
        tls = self.tls
        if tls is None:
            return raw
        if raw:
            self._incoming.write(raw)
        chunks: list[bytes] = []
        ended = False
        while True:
            try:
                chunk = tls.read(_TLS_RECORD_BYTES)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still on its way
            except (ssl.SSLError, ValueError):  # close_notify, a broken record
                chunk = b""
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
        if self._outgoing.pending:  # TLS 1.3 may answer (a key update)
            self.out += self._outgoing.read()
            self.write()
        if chunks:
            self.ended = ended  # the socket may never be readable again (close_notify alone)
            return b"".join(chunks)
        return b"" if ended or raw == b"" else None

    def _recv(self, limit: int) -> bytes | None:
        try:
            return self.sock.recv(limit)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # ConnectionResetError and the like: the peer is gone
            return b""

    def _encode(self, data: bytes) -> bytes:
        """``data`` as it goes on the socket (encrypted, with TLS)."""
        if self.tls is None or not data:
            return data
        self.tls.write(data)
        return self._outgoing.read()

    def write(self) -> None:
        """Write what is waiting, then the session's replies, without blocking; select the
        socket for writing while some remains."""
        while True:
            out = self.out or self._encode(self.session.data_to_send())
            if not out:
                break
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
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
            out = self.out + self._encode(self.session.data_to_send())
            if out:
                sock.send(out)
            sock.shutdown(socket.SHUT_WR)
            drained = 0
            while drained < _DRAIN_BYTES:
                chunk = sock.recv(_DRAIN_BYTES)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            sock.close()
