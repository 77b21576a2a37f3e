"""One server-side connection driven against the shared registry: bytes in, replies out.

This is where the protocol's decisions that need the registry are made (``name-taken``,
``too-many-clients``, ``too-many-keys``), and where the replies to one peer wait to be written,
so that every adapter stays a loop of::

    events = session.receive_data(data, now)   # Identified / ErrorReply, for its log
    write session.data_to_send()                # once the previous write has finished
    close once session.closed and the last replies are written

The replies waiting here are bounded by ``max_pending_reply_bytes`` (whole lines only): a peer
that does not read gets the replies past it dropped and counted in the registry's
``replies_dropped``, so it can neither make the server wait nor grow its memory. An adapter
takes the replies with :meth:`Session.data_to_send` only once it has written the previous
ones, so a peer costs at most twice the bound.
"""

from collections import deque
from collections.abc import Callable, Sequence

from ._connection import ServerConnection
from ._errors import ErrorCode, RegistryRefusal, RemoteProtocolError
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    ErrorReply,
    Identified,
    Identify,
    Log,
    Ping,
    Pong,
    Rejected,
    SessionEvent,
    SetState,
)
from ._limits import MAX_ERROR_REPLIES_PER_RECEIVE, MAX_LINE_BYTES, MAX_PENDING_REPLY_BYTES
from ._registry import Registry

__all__ = ["Session"]

_NO_EVENTS: tuple[SessionEvent, ...] = ()


class Session:
    """The server's side of one TCP connection, from first byte to close.

    Counted in the registry's ``connections_open`` from creation until it is closed.
    """

    __slots__ = (
        "_connection",
        "_error_replies",
        "_events",
        "_held",
        "_max_pending",
        "_outgoing",
        "_registry",
        "closed",
        "name",
        "on_replies",
    )

    def __init__(
        self,
        registry: Registry,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_pending_reply_bytes: int = MAX_PENDING_REPLY_BYTES,
    ) -> None:
        self._registry = registry
        self._connection = ServerConnection(max_line_bytes=max_line_bytes)
        self._max_pending = max_pending_reply_bytes
        # What waits is allocated only while something waits (most connections are idle):
        self._outgoing: bytearray | None = None  # reply lines
        self._events: list[SessionEvent] | None = None  # for the current receive_data call
        self._held: deque[tuple[int, bytes]] | None = None  # (mark awaited, PONG line)
        # Called when held replies become ready outside receive_data (see release_pongs).
        self.on_replies: Callable[[], object] | None = None
        self._error_replies = 0  # ERR lines answered in the current receive_data call
        self.name: str | None = None  # the client's, once the registry has accepted it
        self.closed = False
        registry.count_connection(+1)

    def receive_data(self, data: bytes, now: float) -> Sequence[SessionEvent]:
        """Apply the lines ``data`` completes; returns what happened that the adapter may log
        (Identified, and an ErrorReply for each ERR line answered), in order.

        ``b""`` means the peer closed (or the connection broke): an unfinished last line is
        applied and the client is disconnected. Once ``closed`` is true the caller writes the
        last replies (:meth:`data_to_send`) and closes the connection; data after that is
        ignored. At most ``MAX_ERROR_REPLIES_PER_RECEIVE`` ERR lines are answered per call (all
        are counted).
        """
        if self.closed:
            return self._take_events()
        connection = self._connection
        registry = self._registry
        registry.count_bytes(len(data))
        connection.receive_data(data)
        self._error_replies = 0
        while True:
            try:
                event = connection.next_event()
            except RemoteProtocolError as error:
                assert error.code is not None
                self._refuse(error.code, error.detail)
                self._close(now)
                break
            kind = type(event)
            if kind is Log:
                assert isinstance(event, Log) and self.name is not None
                registry.append(self.name, event.messages, now, event.truncated, origin=self)
            elif event is NEED_DATA:
                break
            elif kind is SetState:
                assert isinstance(event, SetState) and self.name is not None
                try:
                    registry.set_state(self.name, event.key, event.value, now, origin=self)
                except RegistryRefusal as refusal:
                    self._refuse(refusal.code, refusal.detail)
            elif kind is Ping:
                assert isinstance(event, Ping)
                self._pong(connection.send(Pong(event.token)))
            elif kind is Rejected:
                assert isinstance(event, Rejected)
                self._refuse(event.code, event.detail)
            elif kind is Identify:
                assert isinstance(event, Identify)
                try:
                    registry.connect(event.name, now, origin=self)
                except RegistryRefusal as refusal:
                    self._refuse(refusal.code, refusal.detail)
                    self._close(now)
                    break
                self.name = event.name
                self._report(Identified(event.name))
            else:
                assert isinstance(event, ConnectionClosed)
                self._close(now)
                break
        return self._take_events()

    def _take_events(self) -> Sequence[SessionEvent]:
        events, self._events = self._events, None
        return _NO_EVENTS if events is None else events

    @property
    def pongs_held(self) -> bool:
        """True while a ``PONG`` waits for the registry to confirm the lines before it."""
        return bool(self._held)

    @property
    def has_replies(self) -> bool:
        """True while replies wait to be taken by :meth:`data_to_send`."""
        return self._outgoing is not None

    def data_to_send(self) -> bytes:
        """The reply bytes waiting to be written (whole lines), now handed to the caller."""
        if self._outgoing is None:
            return b""
        data, self._outgoing = bytes(self._outgoing), None
        return data

    def release_pongs(self, confirmed: int) -> bool:
        """Answer the ``PING``s whose lines are confirmed up to ``confirmed`` (called by the
        registry); calls ``on_replies`` if any was. True once none is held any more."""
        held = self._held
        released = False
        while held and held[0][0] <= confirmed:
            self._reply(held.popleft()[1])
            released = True
        if not held:
            self._held = None
        if released and self.on_replies is not None:
            self.on_replies()
        return self._held is None

    def refuse_late(self, code: ErrorCode, detail: str, now: float) -> None:
        """A change was refused after ``receive_data`` returned (by a shared store): answer
        ``ERR`` (reported by the next ``receive_data``) and, for a fatal code (a refused
        claim: the name was never this session's), close. Calls ``on_replies``."""
        if self.closed:
            return
        self._refuse(code, detail)
        if code.fatal:
            self.name = None
            self._close(now)
        if self.on_replies is not None:
            self.on_replies()

    def _pong(self, line: bytes) -> None:
        """Answer now, or once the registry confirms every earlier change (see Registry)."""
        if self._held is None:
            mark = self._registry.pong_allowed(self)
            if mark is None:
                self._reply(line)
                return
            self._held = deque()
        else:
            mark = self._registry.mark
        self._held.append((mark, line))

    def _reply(self, line: bytes) -> None:
        outgoing = self._outgoing
        if (0 if outgoing is None else len(outgoing)) + len(line) > self._max_pending:
            self._registry.count_replies_dropped(1)
        elif outgoing is None:
            self._outgoing = bytearray(line)
        else:
            outgoing += line

    def _refuse(self, code: ErrorCode, detail: str) -> None:
        self._registry.count_error(self.name, code)
        if self._error_replies < MAX_ERROR_REPLIES_PER_RECEIVE or code.fatal:
            self._error_replies += 1
            reply = ErrorReply(code, detail)
            self._report(reply)
            self._reply(self._connection.send(reply))

    def _report(self, event: SessionEvent) -> None:
        """Tell the adapter (``receive_data`` returns it)."""
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _close(self, now: float) -> None:
        # PONGs still held are answered once confirmed (a peer may half-close after its PING
        # and wait for the PONG); the adapter bounds how long it waits to write them.
        self.closed = True
        self._registry.count_connection(-1)
        if self.name is not None:
            self._registry.disconnect(self.name, now, origin=self)
