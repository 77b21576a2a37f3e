"""The servers' TLS stream (``_tlsstream.ServerTLSStream``) against anyio's client-side
``TLSStream``, over real sockets on both backends: whole records handed over together, data
intact both ways, the ends of a connection, the attributes a server reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from anyio.streams.tls import TLSAttribute, TLSStream

from logatron_anyio._tls import peer_names_of
from logatron_anyio._tlsstream import ServerTLSStream
from pki import Pki

pytestmark = pytest.mark.anyio

TIMEOUT = 10


@asynccontextmanager
async def pair(
    pki: Pki, *, client_certificate: str | None = None
) -> AsyncIterator[tuple[TLSStream, ServerTLSStream]]:
    """A client's TLSStream and the server's ServerTLSStream of one connection."""
    server_context = pki.server_context(client_certificates=client_certificate is not None)
    with anyio.fail_after(TIMEOUT):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            raw_client = await anyio.connect_tcp("127.0.0.1", port)
            raw_server = await listener.listeners[0].accept()  # type: ignore[attr-defined]
            async with anyio.create_task_group() as tg:
                accepted: list[ServerTLSStream] = []

                async def accept() -> None:
                    accepted.append(await ServerTLSStream.accept(raw_server, server_context))

                tg.start_soon(accept)
                client = await TLSStream.wrap(
                    raw_client,
                    hostname="127.0.0.1",
                    ssl_context=pki.client_context(client_certificate),
                    standard_compatible=False,
                )
            async with client, accepted[0] as server:
                yield client, server


async def receive_exactly(stream: anyio.abc.ByteStream, size: int) -> tuple[bytes, int]:
    """``size`` bytes, and the largest piece one receive gave."""
    data, largest = b"", 0
    while len(data) < size:
        piece = await stream.receive(65536)
        largest = max(largest, len(piece))
        data += piece
    return data, largest


async def test_whole_records_come_together_and_intact(pki: Pki) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: sixteen records
    async with pair(pki) as (client, server):
        await client.send(payload)
        received, largest = await receive_exactly(server, len(payload))
        assert received == payload
        assert largest > 16 * 1024  # more than one record per receive
        await server.send(payload[::-1])
        back, _ = await receive_exactly(client, len(payload))
        assert back == payload[::-1]


async def test_the_peers_end_is_end_of_stream(pki: Pki) -> None:
    async with pair(pki) as (client, server):
        # The server sends no session tickets: a client that never reads leaves nothing
        # unread when it closes, so its close is an end, not a reset.
        await client.send(b"last words")
        await client.aclose()  # no close_notify (standard_compatible=False)
        assert await server.receive() == b"last words"
        with pytest.raises(anyio.EndOfStream):
            await server.receive()
        with pytest.raises(NotImplementedError):
            await server.send_eof()


async def test_attributes_and_certificate_names(pki: Pki) -> None:
    async with pair(pki, client_certificate="worker-9") as (_, server):
        assert server.extra(TLSAttribute.tls_version) in ("TLSv1.2", "TLSv1.3")
        assert server.extra(TLSAttribute.server_side) is True
        assert server.extra(anyio.abc.SocketAttribute.remote_address)[0] == "127.0.0.1"
        assert peer_names_of(server) == frozenset({"worker-9"})
    async with pair(pki) as (_, server):
        assert peer_names_of(server) is None  # no client certificates asked for
