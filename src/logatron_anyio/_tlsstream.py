"""The servers' TLS stream: ``ssl.SSLObject`` on memory BIOs over an anyio byte stream, that
hands over every whole record a transport read brought, at once.

anyio's own ``TLSStream`` returns at most one record (16 KiB) per ``receive()``, so a server
reading 64 KiB at a time would feed its session four times as often as without TLS, and pay
the per-call cost (a task switch, a clock read, a call into the core) four times over. Here one
``receive(max_bytes)`` reads the transport once (up to ``max_bytes``) and returns all it
decrypts, as the sync server's ``Channel`` does. The rest is anyio's behaviour with
``standard_compatible=False``: no closing handshake, an end without ``close_notify`` is an
end (``EndOfStream``), a broken record ``BrokenResourceError``; ``send_eof()`` is not
possible (``NotImplementedError``). Sends are serialised by a lock, since a receive may have to
answer (TLS 1.3 key updates) while a writer task sends.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute

__all__ = ["ServerTLSStream"]

# The most one TLS record carries (RFC 8446, 5.1): what each decryption asks for (a read
# allocates all it asks for, and returns at most one record).
_RECORD_BYTES = 16 * 1024


class ServerTLSStream(anyio.abc.ByteStream):
    """The server's side of a TLS connection over ``transport``; made by :meth:`accept`."""

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self.transport = transport
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._send_lock = anyio.Lock()

    @classmethod
    async def accept(
        cls, transport: anyio.abc.ByteStream, context: ssl.SSLContext
    ) -> ServerTLSStream:
        """Complete the server's handshake over ``transport``. Raises ssl.SSLError when it
        fails (its alert sent, when possible), anyio.EndOfStream or BrokenResourceError when
        the peer leaves; the caller bounds the time and closes the transport."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        stream = cls(transport, tls, incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                await stream._flush()
                incoming.write(await transport.receive())
                continue
            except ssl.SSLError:
                try:
                    await stream._flush()  # the alert tells the peer why
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the peer is gone: the handshake's error says more
                raise
            await stream._flush()
            return stream

    async def _flush(self) -> None:
        """Send what TLS has to send."""
        if self._outgoing.pending:
            async with self._send_lock:
                data = self._outgoing.read()
                if data:
                    await self.transport.send(data)

    def _decrypted(self, max_bytes: int) -> tuple[list[bytes], bool]:
        """The records already received, decrypted (up to ``max_bytes``), and whether the
        peer's end came after them."""
        chunks: list[bytes] = []
        size = 0
        while size < max_bytes:
            try:
                chunk = self._tls.read(min(_RECORD_BYTES, max_bytes - size))
            except ssl.SSLWantReadError:
                return chunks, False
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return chunks, True
            except ssl.SSLError as error:
                if chunks:
                    return chunks, False  # the broken record is raised for on the next call
                raise anyio.BrokenResourceError from error
            if not chunk:
                return chunks, True
            chunks.append(chunk)
            size += len(chunk)
        return chunks, False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """What the peer sent: every whole record one transport read (of up to
        ``max_bytes``) brought, decrypted. Raises anyio.EndOfStream at its end,
        BrokenResourceError for a broken record or connection."""
        while True:
            chunks, ended = self._decrypted(max_bytes)
            await self._flush()  # a TLS 1.3 key update is answered
            if chunks:
                return b"".join(chunks)
            if ended:
                raise anyio.EndOfStream
            try:
                data = await self.transport.receive(max_bytes)
            except anyio.EndOfStream:
                self._incoming.write_eof()
                continue  # what it brings last, then the end
            self._incoming.write(data)

    async def send(self, item: bytes) -> None:
        """Encrypt and send ``item``. Raises anyio.BrokenResourceError (or the transport's
        error) when the connection is gone."""
        try:
            self._tls.write(item)
        except ssl.SSLError as error:
            raise anyio.BrokenResourceError from error
        await self._flush()

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS cannot half-close a connection")

    async def aclose(self) -> None:
        await self.transport.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        tls = self._tls
        return {
            **self.transport.extra_attributes,
            TLSAttribute.alpn_protocol: tls.selected_alpn_protocol,
            TLSAttribute.cipher: tls.cipher,
            TLSAttribute.peer_certificate: lambda: tls.getpeercert(False),
            TLSAttribute.peer_certificate_binary: lambda: tls.getpeercert(True),
            TLSAttribute.server_side: lambda: True,
            TLSAttribute.ssl_object: lambda: tls,
            TLSAttribute.standard_compatible: lambda: False,
            TLSAttribute.tls_version: tls.version,
        }
