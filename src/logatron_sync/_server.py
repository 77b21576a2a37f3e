"""The TCP server on blocking sockets: one ``selectors`` loop, in one thread, for every peer.

Strategy: each connection is a non-blocking socket with a :class:`logatron_core.Session`; the
loop only moves bytes. On readable it makes one large ``recv`` and hands the bytes to the
session; the replies waiting in the session (bounded there: a peer that never reads gets the
excess dropped and counted by the core) are sent at once when nothing else is being written,
otherwise when the socket is writable. The loop sleeps in ``select`` until the registry's next
deadline (retention expiry), or until an accept() paused for lack of descriptors may be retried.
The registry is only ever touched from the loop's thread; other threads reach the loop through
``stop()`` and ``call()``, which write one byte to a wake-up socket pair.

Each peer is a ``_channel.Channel`` (TLS on memory BIOs, see there). With TLS
(``ssl_context``) the loop drives each handshake and closes a connection that has not finished
it ``handshake_timeout`` seconds after accept (deadlines in accept order: the loop looks only
at the oldest).
"""

import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from time import perf_counter
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from logatron_core import (
    MAX_LINE_BYTES,
    Authorizer,
    ErrorCode,
    ErrorReply,
    Identified,
    Registry,
    Session,
)

from ._channel import RECV_BYTES, Channel, format_address
from ._tls import HANDSHAKE_TIMEOUT_SECONDS

__all__ = ["LogatronServer"]

_logger = logging.getLogger("logatron_sync.server")
_T = TypeVar("_T")

# Fairness: one connection's turn should cost about this much time (seconds). A connection whose
# input is slow to apply (a flood of unknown commands costs the core ~20 times more per byte than
# LOG lines) is read in smaller pieces, down to MIN_RECV_BYTES, so that the others still get a
# turn every few milliseconds; it grows back to RECV_BYTES once its turns are cheap again.
TURN_SECONDS: Final = 0.005
MIN_RECV_BYTES: Final = 4096
# After an accept() failure for lack of descriptors, the listener is not selected for this long
# (seconds), so a full descriptor table costs no busy loop and one log line per pause.
ACCEPT_PAUSE_SECONDS: Final = 1.0
# accept() failures that mean "not now" rather than "not this one".
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Connections accepted per readable event of the listener, so a connect storm cannot starve
# the peers that are already connected.
ACCEPTS_PER_TICK: Final = 64


class LogatronServer:
    """The Logatron TCP server on blocking sockets and ``selectors``.

    The listening socket is bound in the constructor (``port=0`` picks an ephemeral port; see
    :attr:`address`), which raises OSError when the address cannot be bound. Serve it in the
    foreground with :meth:`serve_forever` or in a daemon thread with :meth:`start`; either way
    :meth:`stop` ends it. As a context manager it is started on entry and stopped on exit.

    ``registry`` is shared with the caller (a new :class:`~logatron_core.Registry` by default);
    it is only modified from the thread that runs the loop, so read it from another thread only
    when no peer is sending (after a ``PING`` barrier, for instance). ``clock`` gives the time
    stamped on every line. With ``ssl_context`` (``logatron_sync._tls.server_context``) clients
    connect over TLS and have ``handshake_timeout`` seconds to complete the handshake;
    ``authorizer`` decides which names they may identify as (anyone as anything by default).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2212,
        *,
        registry: Registry | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
        authorizer: Authorizer | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.ssl_context = ssl_context
        self.authorizer = authorizer if authorizer is not None else Authorizer()
        self.handshake_timeout = handshake_timeout
        self._handshaking: deque[Channel] = deque()  # in accept order: oldest deadline first
        self.registry = registry if registry is not None else Registry()
        self.max_line_bytes = max_line_bytes
        self._clock = clock
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=4096)
        self._listener.setblocking(False)
        self._accept_paused_until: float | None = None  # monotonic; after an accept() failure
        self._address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._connections: dict[socket.socket, Channel] = {}
        self._lock = threading.Lock()
        self._serving = False
        self._stopping = False
        self._closed = False  # listener and wake-up sockets closed
        self._loop_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None  # the one start() made
        self._ready = threading.Event()
        self._done = threading.Event()
        self._calls: deque[tuple[Callable[[Registry], Any], Future[Any]]] = deque()
        self._calls_closed = False  # the loop runs no more calls: callers run their own

    # -- public API ----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on."""
        return self._address

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def connection_count(self) -> int:
        """Connections open right now (identified or not)."""
        return len(self._connections)

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called (from another thread or a
        signal handler). On the way out, whatever ended it (``stop()``, KeyboardInterrupt),
        every connection is closed with its client's ``close`` event delivered, and the listener
        is closed.

        Raises RuntimeError if the server is already serving or was stopped.
        """
        with self._lock:
            if self._serving or self._stopping:
                raise RuntimeError("the server is already serving or was stopped")
            self._serving = True
            self._loop_thread = threading.current_thread()
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._listener, selectors.EVENT_READ, None)
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            self._ready.set()
            self._loop(selector)
        finally:
            try:
                self._shutdown(selector)
            finally:
                selector.close()
                self._done.set()

    def start(self) -> None:
        """Serve in a daemon thread; return once the loop is accepting connections.

        Raises RuntimeError if the server is already serving or was stopped.
        """
        with self._lock:
            if self._serving or self._stopping or self._thread is not None:
                raise RuntimeError("the server is already serving or was stopped")
            self._thread = threading.Thread(
                target=self.serve_forever, name=f"logatron-sync-{self.port}", daemon=True
            )
        self._thread.start()
        while not self._ready.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it was ready")

    def stop(self) -> None:
        """Stop serving: close every connection (each client's ``close`` event is delivered),
        close the listener and wait for the loop to end (unless called from the loop's own
        thread, such as from a signal handler, where it only asks it to end).

        Idempotent; never raises for a server that is not running.
        """
        with self._lock:
            self._stopping = True
            serving = self._serving
        if not serving:
            self._close_sockets()
            return
        self._wake()
        if threading.current_thread() is self._loop_thread:
            return
        self._done.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def call(self, function: Callable[[Registry], _T], timeout: float | None = None) -> _T:
        """Run ``function(registry)`` in the loop's thread and return its result: the safe way
        to read (or change) the registry from another thread while the server runs. When the
        server is not serving, or when called from the loop's own thread (a subscriber), it runs
        at once in the caller's thread.

        Raises what ``function`` raises, and TimeoutError when the loop has not run it within
        ``timeout`` seconds (it may still run later).
        """
        future: Future[_T] = Future()
        with self._lock:
            queued = (
                self._serving
                and not self._calls_closed
                and threading.current_thread() is not self._loop_thread
            )
            if queued:
                self._calls.append((function, future))
        if not queued:
            return function(self.registry)
        self._wake()
        return future.result(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, selector: selectors.BaseSelector) -> None:
        listener, wake_r = self._listener, self._wake_r
        read_event, write_event = selectors.EVENT_READ, selectors.EVENT_WRITE
        while not self._stopping:
            for key, mask in selector.select(self._select_timeout()):
                connection: Channel | None = key.data
                if connection is not None:
                    try:
                        if connection.deadline is not None:
                            self._handshake(connection)
                            continue
                        if mask & read_event:
                            self._on_readable(connection)
                        if mask & write_event and connection.writing:
                            connection.write()
                    except Exception:
                        _logger.exception("connection failed; closing it")
                        self._abort(connection)
                elif key.fileobj is listener:
                    self._accept(selector)
                elif key.fileobj is wake_r:
                    try:
                        wake_r.recv(4096)
                    except OSError:
                        pass
                    self._run_calls()
            self._on_deadlines(selector)

    def _select_timeout(self) -> float | None:
        """Until the registry's next deadline, the end of an accept pause or the oldest TLS
        handshake's deadline (None: no timer)."""
        timeouts: list[float] = []
        handshaking = self._handshaking
        while handshaking and handshaking[0].deadline is None:
            handshaking.popleft()  # done (or closed): nothing to wait for
        if handshaking:
            timeouts.append((handshaking[0].deadline or 0.0) - time.monotonic())
        deadline = self.registry.next_deadline()
        if deadline is not None:
            timeouts.append(deadline - self._clock())
        if self._accept_paused_until is not None:
            timeouts.append(self._accept_paused_until - time.monotonic())
        return max(0.0, min(timeouts)) if timeouts else None

    def _on_deadlines(self, selector: selectors.BaseSelector) -> None:
        paused_until = self._accept_paused_until
        if paused_until is not None and time.monotonic() >= paused_until:
            self._accept_paused_until = None
            selector.register(self._listener, selectors.EVENT_READ, None)
        handshaking, now = self._handshaking, time.monotonic()
        while handshaking and (handshaking[0].deadline or 0.0) <= now:
            late = handshaking.popleft()
            if late.deadline is not None:  # else done, or closed
                _logger.info("TLS handshake from %s failed: no handshake in time", late.peer)
                self._abort(late)
        deadline = self.registry.next_deadline()
        if deadline is not None and self._clock() >= deadline:
            try:
                self.registry.expire(self._clock())
            except Exception:
                _logger.exception("expiring retained clients failed")

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(ACCEPTS_PER_TICK):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    continue  # the peer gave up before it was accepted
                # Out of descriptors: the listener stays readable, so stop selecting it for a
                # while (no busy loop; one log line per pause).
                _logger.warning("accept failed (retrying in %g s): %s", ACCEPT_PAUSE_SECONDS, error)
                selector.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                deadline = None
                if self.ssl_context is not None:
                    deadline = time.monotonic() + self.handshake_timeout
                session = Session(
                    self.registry, max_line_bytes=self.max_line_bytes, authorizer=self.authorizer
                )
                peer = format_address(address)
                connection = Channel(sock, session, peer, selector, self.ssl_context, deadline)
            except Exception:
                _logger.exception("setting up a connection failed")
                sock.close()
                continue
            self._connections[sock] = connection
            if deadline is not None:
                self._handshaking.append(connection)

    def _handshake(self, connection: Channel) -> None:
        """Take the TLS handshake one step further; once done, read what may be waiting."""
        try:
            done = connection.handshake()
        except OSError as error:  # ssl.SSLError: plain text, garbage, an untrusted certificate
            _logger.info("TLS handshake from %s failed: %s", connection.peer, error)
            self._abort(connection)
            return
        if done:
            self._on_readable(connection)  # input may be waiting inside the TLS layer

    def _on_readable(self, connection: Channel) -> None:
        recv_bytes = connection.recv_bytes
        data = connection.receive()
        if data is None:
            return
        session = connection.session
        started = perf_counter()
        events = session.receive_data(data, self._clock())
        elapsed = perf_counter() - started
        if elapsed > TURN_SECONDS:
            connection.recv_bytes = max(MIN_RECV_BYTES, int(recv_bytes * TURN_SECONDS / elapsed))
        elif recv_bytes < RECV_BYTES and elapsed < TURN_SECONDS / 2:
            connection.recv_bytes = min(RECV_BYTES, recv_bytes * 2)
        for event in events:
            if isinstance(event, Identified):
                _logger.info("client %s connected (%s)", event.name, connection.peer)
            elif isinstance(event, ErrorReply) and event.code.fatal:
                level = logging.WARNING if event.code is ErrorCode.UNAUTHORIZED else logging.INFO
                _logger.log(level, "%s: ERR %s %s", connection.peer, event.code.value, event.text)
        if session.has_replies and not connection.out:
            connection.write()
        if session.closed:
            self._close(connection)
        elif connection.ended:  # the peer's end came with these bytes: no event will follow
            self._on_readable(connection)

    def _close(self, connection: Channel) -> None:
        """Flush what can be sent without waiting, then close the connection."""
        self._connections.pop(connection.sock, None)
        connection.close()

    def _abort(self, connection: Channel) -> None:
        """Close a connection whose handling failed, delivering its client's ``close``."""
        connection.deadline = None  # no handshake to wait for any more
        try:
            connection.session.receive_data(b"", self._clock())
        except Exception:
            _logger.exception("closing a failed session failed")
        connection.out = b""
        connection.session.data_to_send()  # dropped: the connection failed
        self._close(connection)

    def _shutdown(self, selector: selectors.BaseSelector) -> None:
        """End every connection as if its peer had closed, then close the listener."""
        for connection in list(self._connections.values()):
            try:
                connection.session.receive_data(b"", self._clock())
            except Exception:
                _logger.exception("closing a session failed")
            self._close(connection)
        with self._lock:
            self._calls_closed = True
        self._run_calls()
        self._close_sockets()

    def _run_calls(self) -> None:
        calls, registry = self._calls, self.registry
        while calls:
            function, future = calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(registry))
            except BaseException as error:
                future.set_exception(error)
                if not isinstance(error, Exception):
                    raise

    def _wake(self) -> None:
        """Make the loop's select return (safe from any thread and from signal handlers)."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the buffer is full (a wake-up is pending already) or the loop has ended

    def _close_sockets(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
