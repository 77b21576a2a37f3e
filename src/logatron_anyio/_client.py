"""The async client on anyio: ``logatron_core.ClientConnection`` over a TCP stream.

There is no background task: replies are read when :meth:`LogatronClient.ping` waits for its
``PONG`` (and while :func:`connect` checks that the server accepted the name). Non-fatal
``ERR`` replies read on the way are kept in ``client.errors``.
"""

from __future__ import annotations

import math
from types import TracebackType

import anyio
import anyio.abc

from logatron_core import (
    ClientConnection,
    ErrorReply,
    Identify,
    Log,
    LogatronError,
    RemoteProtocolError,
    ServerRefused,
    SetState,
)

__all__ = ["ConnectionLost", "LogatronClient", "ServerRefused", "connect"]

_RECEIVE_BYTES = 65536


class ConnectionLost(LogatronError):
    """The connection to the server ended (it closed, or the network broke)."""


class LogatronClient:
    """One connection to a Logatron server, identified by ``name``; made by :func:`connect`.

    ``errors`` holds the non-fatal ``ERR`` replies read so far (the latest
    ``MAX_KEPT_ERRORS``).
    """

    def __init__(self, name: str, stream: anyio.abc.SocketStream) -> None:
        self.name = name
        self._stream = stream
        self._connection = ClientConnection()
        self._send_lock = anyio.Lock()
        self._receive_lock = anyio.Lock()
        self._lost = False

    @property
    def errors(self) -> list[ErrorReply]:
        """The non-fatal ``ERR`` replies read so far (the latest ``MAX_KEPT_ERRORS``)."""
        return list(self._connection.errors)

    async def log(self, *messages: str) -> None:
        """Send each message as a log line (a message with line breaks as several lines).

        Raises LocalProtocolError before ``connect`` identified the client, ServerRefused or
        ConnectionLost when the connection is gone.
        """
        await self._send(self._connection.send(Log(messages)))

    async def set(self, key: str, value: str) -> None:
        """Set state ``key`` to ``value``. Raises LocalProtocolError (nothing sent) for an
        invalid key or a value with a line break, ServerRefused or ConnectionLost."""
        await self._send(self._connection.send(SetState(key, value)))

    async def ping(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (the API asked for)
        """Send ``PING`` with a unique token and wait for its ``PONG``: every line sent before
        has then been applied by the server.

        Raises TimeoutError after ``timeout`` seconds, ServerRefused or ConnectionLost.
        """
        await self._ping(timeout, b"")

    async def _ping(self, timeout: float, before: bytes) -> None:  # noqa: ASYNC109
        connection = self._connection
        token, ping = connection.ping()
        try:
            with anyio.fail_after(timeout):
                await self._send(before + ping)
                async with self._receive_lock:
                    while not connection.pong_received(token):
                        await self._receive()
        finally:
            connection.forget_ping(token)

    async def aclose(self) -> None:
        """Close the connection (lines not yet confirmed by a ping may be lost)."""
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    async def __aenter__(self) -> LogatronClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _raise_if_gone(self) -> None:
        if self._connection.refusal is not None:
            raise self._connection.refusal
        if self._lost or self._connection.server_closed:
            raise ConnectionLost("the connection to the server is closed")

    async def _send(self, data: bytes) -> None:
        self._raise_if_gone()
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
                self._lost = True
                raise ConnectionLost(f"the connection to the server broke: {error!r}") from error

    async def _receive(self) -> None:
        """Read once and handle the replies it completes."""
        self._raise_if_gone()
        try:
            data = await self._stream.receive(_RECEIVE_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            data = b""
        connection = self._connection
        connection.receive_data(data)
        try:
            connection.handle_replies()
        except RemoteProtocolError as error:
            self._lost = True
            raise ConnectionLost(str(error)) from None  # "unexpected reply from the server: ..."
        self._raise_if_gone()


async def connect(
    name: str,
    host: str = "127.0.0.1",
    port: int = 2212,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 (one deadline for connect and the IAM check)
) -> LogatronClient:
    """Connect, identify as ``name`` and wait until the server has accepted it.

    Use as ``async with await connect("bob") as client:`` (or call ``aclose()``).
    Raises LocalProtocolError for an invalid name (nothing sent), OSError when the server cannot
    be reached, ServerRefused when it refuses the name (name-taken, too-many-clients),
    ConnectionLost when it closes without saying why, TimeoutError after ``timeout`` seconds.
    """
    ClientConnection().send(Identify(name))  # validates the name before connecting
    with anyio.fail_after(timeout):  # one deadline for connecting and the IAM check
        stream = await anyio.connect_tcp(host, port)
        client = LogatronClient(name, stream)
        try:
            # IAM and PING in one write: a refusal is then always read before the server closes.
            # The blank line between them (ignored by a Logatron server) ends the head of what
            # an HTTP server takes for a request, so that one answers at once, and is told from
            # a Logatron server, instead of waiting for the rest of its headers.
            await client._ping(math.inf, client._connection.send(Identify(name)) + b"\n")
        except BaseException:
            await client.aclose()
            raise
    return client
