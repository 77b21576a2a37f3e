"""The WebSocket tail: backlog after a cursor, ``current``, then live events.

The seam between backlog and live is exact because the store subscribes the tail and takes
its snapshot in one step (``LogSource.follow``): every line is either in the snapshot (``seq``
at most the snapshot's newest) or delivered live afterwards, never both and never neither.

Ingest never waits for a tail: its subscriber is an :class:`EventStream`, a queue bounded in
*lines*; past the bound, lines are dropped and counted, and the reader gets one
``{"type": "lagged", "missed": N}`` in their place. One task turns queued events into JSON and
WebSocket frames and writes them, a few thousand lines at a time, so that a tail whose reader
stalls keeps its backlog queued (and lags) instead of encoding it; another task reads the
peer's frames (pongs, close).

Filters (``_filters``): the clients followed are chosen in the subscriber (the queue holds only
their events, clients that connect later included); the lines are filtered in the writer, by
the runs it takes from the queue, so that ingest never runs a regular expression. A filtered
writer takes lines until it has a turn's worth to send: a selective pattern examines every
line instead of lagging.

Every write to the peer has a deadline (the HTTP server's send timeout): a peer that stops
reading for that long ends the tail (1011), whatever the ping interval. A watchdog task keeps
it, rather than a cancel scope around each write, which would cost ~8 us a write (~15% of the
server's time sending a backlog).

Speed: wsproto handles the handshake and every control frame, but text frames are built here
(and the messages by ``_messages``, log lines by its ``run_payloads``): ~0.6 us a line against
~7 us through ``json.dumps`` and ``WSConnection.send``, and a live tail must keep up with
ingest. This is sound because the server accepts no extension (``AcceptConnection()`` offers
none), never fragments, and only writes data frames while wsproto says the connection is open.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import anyio.abc
import anyio.lowlevel
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WebSocketLocalProtocolError

from logatron_core import Logged, LogSource, NoSuchClient, RegistryEvent

from ._filters import ClientFilter, LineFilter
from ._messages import Current, Gap, run_payloads, tail_payloads
from ._stream import EventStream, Lagged

__all__ = [
    "DEFAULT_TAIL_QUEUE_LINES",
    "PING_INTERVAL_SECONDS",
    "TailOptions",
    "newest_runs",
    "run_tail",
]

# Lines queued for one tail before it is told it lagged. At ~200 bytes a line this bounds a
# stalled tail to a few MB; a live browser tab drains it in well under a second.
DEFAULT_TAIL_QUEUE_LINES = 10_000

# The server pings every tail this often and closes one that has not answered the previous
# ping (browsers answer pings by themselves). loggregator pinged every 30 s.
PING_INTERVAL_SECONDS = 20.0

# Frames joined into one socket write (a turn's WRITE_BATCH_LINES fit in one).
WRITE_BATCH_BYTES = 512 * 1024

# Lines taken from the queue per turn of the writer (see the module comment): about two
# 64 KiB chunks of ingest, so the writer keeps up with the readers in a fair scheduler.
WRITE_BATCH_LINES = 2000

# A tail socket's kernel send buffer. Linux grows it to 4 MiB by default, which lets a reader
# that stalls absorb ~20,000 frames the server has to encode for nothing; 128 KiB still carries
# ~2.5 MB/s to a browser 50 ms away.
TAIL_SEND_BUFFER_BYTES = 128 * 1024

# How long a closing tail may take to send its close frame to a peer that does not read.
CLOSE_GRACE_SECONDS = 1.0

RECEIVE_BYTES = 16 * 1024

# A message from the peer longer than this closes the tail (1009): tails take no input.
MAX_INCOMING_MESSAGE_BYTES = 64 * 1024

# How a tail ends: a close code and its reason.
Done = Callable[[tuple[int, str]], None]


class TailOptions:
    """Settings shared by every tail of one HTTP server."""

    __slots__ = ("lagged_total", "max_queue_lines", "ping_interval", "subscribers")

    def __init__(
        self,
        max_queue_lines: int = DEFAULT_TAIL_QUEUE_LINES,
        ping_interval: float = PING_INTERVAL_SECONDS,
    ) -> None:
        if max_queue_lines < 1:
            raise ValueError("max_queue_lines must be at least 1")
        self.max_queue_lines = max_queue_lines
        self.ping_interval = ping_interval
        self.lagged_total = 0  # lines dropped across every tail, for /metrics
        self.subscribers = 0  # open tails

    def count_dropped(self, lines: int) -> None:
        self.lagged_total += lines


def _payloads(item: RegistryEvent | Lagged, lines: LineFilter | None) -> list[bytes]:
    """``tail_payloads``, with a run's lines cut to those ``lines`` keeps."""
    if lines is None or not isinstance(item, Logged):
        return tail_payloads(item)
    return [payload for part in lines.runs(item) for payload in run_payloads(part, tail=True)]


def _text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (a server's, RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


class _Tail:
    """One open tail: its WebSocket, its queue and its four tasks (write, read, ping, watch
    the writes)."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        ws: WSConnection,
        options: TailOptions,
        send_timeout: float,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.options = options
        self.send_timeout = send_timeout
        self.writing_since: float | None = None  # when the write in progress began
        self.send_lock = anyio.Lock()
        self.awaiting_pong = False
        self.incoming = 0  # bytes of the peer's current message
        self.close: tuple[int, str] | None = None  # why the tail ends

    async def send_event(self, event: Event) -> None:
        """Send a control event (ping, pong, close) if wsproto's state still allows it."""
        async with self.send_lock:
            try:
                data = self.ws.send(event)
            except WebSocketLocalProtocolError:
                return  # the connection closed meanwhile: nothing to say any more
            await self._write(data)

    async def send_payloads(self, payloads: Iterable[bytes]) -> None:
        """Write each payload as a text frame, batched; nothing once the connection closes."""
        batch: list[bytes] = []
        size = 0
        for payload in payloads:
            frame = _text_frame(payload)
            batch.append(frame)
            size += len(frame)
            if size >= WRITE_BATCH_BYTES:
                await self.send_data(b"".join(batch))
                batch, size = [], 0
        if batch:
            await self.send_data(b"".join(batch))

    async def send_data(self, data: bytes) -> None:
        async with self.send_lock:
            if self.ws.state is ConnectionState.OPEN:
                await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Every write to the peer (under the send lock), watched by ``watch_writes``."""
        self.writing_since = anyio.current_time()
        try:
            await self.stream.send(data)
        finally:
            self.writing_since = None

    async def write_backlog(self, backlog: deque[Logged], lines: LineFilter | None) -> None:
        """Send the backlog's runs, about WRITE_BATCH_LINES lines (sent or filtered out) a
        turn."""
        while backlog:
            payloads: list[bytes] = []
            taken = 0
            while backlog and taken < WRITE_BATCH_LINES:
                run = backlog.popleft()
                taken += len(run.messages)
                payloads += _payloads(run, lines)
            await self.send_payloads(payloads)
            await anyio.lowlevel.checkpoint()

    async def write_live(self, events: EventStream, lines: LineFilter | None) -> None:
        while True:
            await events.wait()
            # One write per turn: each write costs a round of the scheduler, in which every
            # reader runs (on trio, writing run by run starved a live tail to ~20k lines/s).
            # A filtered tail sends as many lines a turn, examining the queue until it has them
            # (at most the queue's bound: filtering out a line costs ~1/20 of sending it).
            payloads: list[bytes] = []
            while True:
                for item in events.drain(WRITE_BATCH_LINES):
                    payloads += _payloads(item, lines)
                if lines is None or len(payloads) >= WRITE_BATCH_LINES or not events.ready:
                    break
            if payloads:
                await self.send_payloads(payloads)
            else:
                await anyio.lowlevel.checkpoint()

    async def read(self, done: Done) -> None:
        while True:
            try:
                data: bytes | None = await self.stream.receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = None
            self.ws.receive_data(data)
            for event in self.ws.events():
                await self.on_event(event, done)
            if data is None:
                done((1006, "connection lost"))
                return

    async def on_event(self, event: Event, done: Done) -> None:
        if isinstance(event, Ping):
            await self.send_event(event.response())
        elif isinstance(event, Pong):
            self.awaiting_pong = False
        elif isinstance(event, (TextMessage, BytesMessage)):
            # Messages to a tail carry nothing and are dropped, but one that never ends would
            # keep the server reading: past the bound the tail closes with 1009.
            self.incoming += len(event.data)
            if self.incoming > MAX_INCOMING_MESSAGE_BYTES:
                done((1009, f"a tail takes no messages over {MAX_INCOMING_MESSAGE_BYTES} bytes"))
            elif event.message_finished:
                self.incoming = 0
        elif isinstance(event, CloseConnection):
            # The peer closed, or wsproto found a protocol violation (code 1002): answer with
            # the same code and reason.
            await self.send_event(event.response())
            done((event.code, event.reason or ""))

    async def ping(self, done: Done) -> None:
        interval = self.options.ping_interval
        while True:
            await anyio.sleep(interval)
            if self.awaiting_pong:
                done((1011, f"no pong within {interval:g} s"))
                return
            self.awaiting_pong = True
            # A writer blocked on a peer that stopped reading holds the send lock: give up on
            # this ping after an interval, and the missing pong ends the tail next time round.
            with anyio.move_on_after(interval):
                await self.send_event(Ping(b"logatron"))

    async def watch_writes(self, done: Done) -> None:
        """End the tail when one write has taken longer than the send timeout: wake when the
        write in progress would pass it (or a timeout from now, if none is)."""
        timeout = self.send_timeout
        while True:
            started, now = self.writing_since, anyio.current_time()
            if started is not None and now - started >= timeout:
                done((1011, f"a write took over {timeout:g} s"))
                return
            await anyio.sleep(timeout if started is None else started + timeout - now)

    async def until_gone(self, task: Callable[[Done], Awaitable[None]], done: Done) -> None:
        """Run ``task``; a lost connection ends the tail."""
        try:
            await task(done)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            done((1006, "connection lost"))

    async def say_goodbye(self) -> None:
        """Send our close frame (best effort, bounded in time) if the peer has not closed."""
        code, reason = self.close or (1001, "server shutting down")
        if self.ws.state is not ConnectionState.OPEN:
            return
        with anyio.move_on_after(CLOSE_GRACE_SECONDS, shield=True):
            try:
                await self.send_event(CloseConnection(code=code, reason=reason))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass


def newest_runs(
    runs: Sequence[Logged], count: int, lines: LineFilter | None = None
) -> list[Logged]:
    """The newest ``count`` lines of ``runs`` (ordered by seq) that ``lines`` keeps (every
    line if None), as runs: the oldest one kept may be cut to its newest lines. Only the runs
    from the newest back to the count are filtered."""
    kept: list[Logged] = []
    left = count
    for run in reversed(runs):
        for part in reversed([run] if lines is None else lines.runs(run)):
            if left <= 0:
                break
            if len(part.messages) > left:
                first_seq = part.last_seq - left + 1
                part = Logged(
                    part.name, first_seq, part.timestamp, part.messages[-left:], part.truncated
                )
            kept.append(part)
            left -= len(part.messages)
        if left <= 0:
            break
    kept.reverse()
    return kept


def _backlog(
    source: LogSource,
    events: EventStream,
    since: int | None,
    clients: ClientFilter | None,
    newest: int | None,
    lines: LineFilter | None,
) -> tuple[deque[Logged], int, int]:
    """The runs to send before ``current``, the lines missed, and the seq ``current`` reports,
    from the snapshot ``events`` took as it subscribed (runs shared, not copied line by line).

    A cursor past the newest seq comes from before a restart of an in-memory server (seqs
    began again at 1): then everything buffered up to the subscription is new to this reader.
    With ``newest``, only the newest lines are sent, and only the lines missed among them
    are told.
    """
    snapshot = events.snapshot
    assert snapshot is not None
    if since is None or since <= snapshot.last_seq:
        runs, missed = snapshot.runs, snapshot.missed if since is not None else 0
    else:
        exact = None if clients is None else clients.exact
        try:
            stored = source.snapshot(0, exact).runs
        except NoSuchClient:
            stored = []
        if clients is not None and exact is None:
            stored = clients.runs(stored)
        # Runs are appended whole, so each is entirely before the subscription or entirely
        # after it (and then delivered live).
        runs, missed = [run for run in stored if run.last_seq <= snapshot.last_seq], 0
    if newest is not None:
        runs = newest_runs(runs, newest, lines)
        missed = min(missed, newest - sum(len(run.messages) for run in runs))
    return deque(runs), missed, snapshot.last_seq


async def run_tail(
    stream: anyio.abc.ByteStream,
    ws: WSConnection,
    source: LogSource,
    *,
    clients: ClientFilter | None,
    lines: LineFilter | None,
    since: int | None,
    options: TailOptions,
    send_timeout: float,
    newest: int | None = None,
) -> None:
    """Serve one accepted WebSocket tail until the peer leaves or the task is cancelled.

    ``clients``: the clients followed (None: all, those that connect later included);
    ``lines``: the log lines sent (None: all; client events are not filtered by it).
    ``since`` None means the whole buffered backlog without a gap notice; ``newest`` keeps
    only the newest lines of the backlog that ``lines`` keeps (``?tail=N``). A write may take
    ``send_timeout`` seconds at most. Every way out sends a close frame with a code and a
    reason when the connection still allows it.
    """
    raw_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if raw_socket is not None:
        raw_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TAIL_SEND_BUFFER_BYTES)
    tail = _Tail(stream, ws, options, send_timeout)
    events = EventStream(
        source,
        options.max_queue_lines,
        client=clients if clients is None or clients.exact is None else clients.exact,
        on_drop=options.count_dropped,
        since=since or 0,
    )
    options.subscribers += 1
    try:
        backlog, missed, last_seq = _backlog(source, events, since, clients, newest, lines)
        backlog_lines = lines if newest is None else None  # newest_runs filtered them
        current = Current(last_seq)
        async with anyio.create_task_group() as tg:

            def done(reason: tuple[int, str]) -> None:
                if tail.close is None:
                    tail.close = reason
                tg.cancel_scope.cancel()

            async def write(done: Done) -> None:
                if missed:
                    await tail.send_payloads(tail_payloads(Gap(missed)))
                await tail.write_backlog(backlog, backlog_lines)
                await tail.send_payloads(tail_payloads(current))
                await tail.write_live(events, lines)

            tg.start_soon(tail.until_gone, tail.read, done)
            tg.start_soon(tail.until_gone, tail.ping, done)
            tg.start_soon(tail.watch_writes, done)
            await tail.until_gone(write, done)
    finally:
        events.close()
        options.subscribers -= 1
        await tail.say_goodbye()
