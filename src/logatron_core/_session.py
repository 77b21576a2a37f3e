"""One server-side connection driven against the shared registry: bytes in, reply bytes out.

This is where the protocol's decisions that need the registry are made (``name-taken``,
``too-many-clients``, ``too-many-keys``), so that every adapter stays a loop of
``reply = session.receive_data(data, now)``, write ``reply``, close once ``session.closed``.
"""

from ._connection import ServerConnection
from ._errors import ErrorCode, RegistryRefusal, RemoteProtocolError
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    ErrorReply,
    Identify,
    Log,
    Ping,
    Pong,
    Rejected,
    SetState,
)
from ._limits import MAX_ERROR_REPLIES_PER_RECEIVE, MAX_LINE_BYTES
from ._registry import ClientHandle, Registry

__all__ = ["Session"]


class Session:
    """The server's side of one TCP connection, from first byte to close."""

    __slots__ = ("_client", "_connection", "_error_replies", "_registry", "closed")

    def __init__(self, registry: Registry, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._registry = registry
        self._connection = ServerConnection(max_line_bytes=max_line_bytes)
        self._client: ClientHandle | None = None
        self._error_replies = 0  # ERR lines answered in the current receive_data call
        self.closed = False

    @property
    def name(self) -> str | None:
        """The client's name once it has identified itself."""
        return self._client.name if self._client else None

    def receive_data(self, data: bytes, now: float) -> bytes:
        """Apply the lines ``data`` completes and return the replies to write (maybe ``b""``).

        ``b""`` means the peer closed (or the connection broke): an unfinished last line is
        applied and the client is disconnected. When ``closed`` is true afterwards, the caller
        writes the reply and closes the connection; data after that is ignored. At most
        ``MAX_ERROR_REPLIES_PER_RECEIVE`` ERR lines are answered per call (all are counted).
        """
        if self.closed:
            return b""
        connection = self._connection
        registry = self._registry
        registry.count_bytes(len(data))
        connection.receive_data(data)
        replies: list[bytes] = []
        self._error_replies = 0
        while True:
            try:
                event = connection.next_event()
            except RemoteProtocolError as error:
                assert error.code is not None
                self._refuse(error.code, error.detail, replies)
                self._close(now)
                break
            kind = type(event)
            if kind is Log:
                assert isinstance(event, Log) and self._client is not None
                registry.append(self._client, event.messages, now, event.truncated)
            elif event is NEED_DATA:
                break
            elif kind is SetState:
                assert isinstance(event, SetState) and self._client is not None
                try:
                    registry.set_state(self._client, event.key, event.value, now)
                except RegistryRefusal as refusal:
                    self._refuse(refusal.code, refusal.detail, replies)
            elif kind is Ping:
                assert isinstance(event, Ping)
                replies.append(connection.send(Pong(event.token)))
            elif kind is Rejected:
                assert isinstance(event, Rejected)
                self._refuse(event.code, event.detail, replies)
            elif kind is Identify:
                assert isinstance(event, Identify)
                try:
                    self._client = registry.connect(event.name, now)
                except RegistryRefusal as refusal:
                    self._refuse(refusal.code, refusal.detail, replies)
                    self._close(now)
                    break
            else:
                assert isinstance(event, ConnectionClosed)
                self._close(now)
                break
        return b"".join(replies)

    def _refuse(self, code: ErrorCode, detail: str, replies: list[bytes]) -> None:
        self._registry.count_error(self._client, code)
        if self._error_replies < MAX_ERROR_REPLIES_PER_RECEIVE or code.fatal:
            self._error_replies += 1
            replies.append(self._connection.send(ErrorReply(code, detail)))

    def _close(self, now: float) -> None:
        self.closed = True
        if self._client is not None:
            self._registry.disconnect(self._client, now)
