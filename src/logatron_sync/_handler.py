"""A ``logging.Handler`` that sends records to a Logatron server and never blocks the caller.

Strategy: ``emit()`` formats the record and appends the text to a bounded deque under a lock
that is only ever held for a few list operations; it never touches the network. One daemon
thread owns the connection (a :class:`LogatronClient`): it takes a batch of queued records,
sends them as ``LOG`` lines followed by a ``PING``, and forgets them only when the ``PONG``
arrives. If the connection fails first, the batch goes back to the front of the queue and is
sent again after a reconnect (exponential backoff), so a record is never lost silently: it is
confirmed, still queued, or counted in ``dropped`` (the queue was full). A record is sent twice
only when it was sent but not confirmed before the connection broke.
"""

import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

from logatron_core import TOKEN_RULE, LocalProtocolError, is_valid_name, is_valid_token

from ._client import LogatronClient
from ._tls import client_context

__all__ = ["HandlerStats", "LogatronHandler"]

# Records sent before each PING: enough to make a round trip cheap per record, few enough that a
# broken connection re-sends little.
_MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class HandlerStats:
    """A snapshot of a :class:`LogatronHandler`'s counters."""

    connected: bool
    queued: int  # records held: waiting to be sent, or sent and awaiting their PONG
    confirmed: int  # records the server confirmed with a PONG
    dropped: int  # records dropped because the queue was full
    connections: int  # connections made (the first one and every reconnect)
    server_errors: int  # non-fatal ERR replies (line-too-long …)
    last_error: str | None  # why the last connection attempt or connection failed


class LogatronHandler(logging.Handler):
    """Sends log records to a Logatron server as client ``name``, from a background thread.

    ``emit()`` never blocks on the network and never raises: past ``queue_size`` held records
    (queued or awaiting confirmation) a record is dropped and counted in :attr:`dropped`, and
    the count is sent as a ``LOG`` line ``logatron: N records dropped`` once the server can be
    reached. A formatting error goes to :meth:`handleError` as usual. A multi-line record (a
    traceback) arrives as consecutive entries.

    The thread connects (``timeout`` bounds connecting and each wait for a ``PONG``), sends
    queued records as soon as it can, sends a ``PING`` every ``flush_interval`` seconds when
    idle (so a restarted server is noticed), and reconnects after a failure with a backoff from
    ``min_backoff`` doubling up to ``max_backoff`` seconds. Records not yet confirmed by a
    ``PONG`` are sent again after a reconnect.

    :meth:`flush` waits up to ``flush_timeout`` seconds for every record to be confirmed;
    :meth:`close` flushes for up to ``close_timeout`` seconds, then stops the thread. Keyword
    arguments only after ``port``, so it can be built by :func:`logging.config.dictConfig`.

    ``token`` goes with ``IAM`` to a server that needs one. TLS: ``ssl_context``, or, as plain
    values for ``dictConfig``, ``tls=True`` (trusting the system's CAs), ``tls_ca`` (a CA file;
    implies TLS), ``tls_cert`` and ``tls_key`` (a client certificate and its key). A refused
    name or token, like an unreachable server, is retried and shows in ``stats().last_error``.
    Raises LocalProtocolError (a ValueError) for an invalid client name or token, ValueError
    for a ``queue_size`` below 1, OSError or ssl.SSLError for TLS files it cannot use.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 2212,
        *,
        queue_size: int = 10_000,
        flush_interval: float = 0.5,
        timeout: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        flush_timeout: float = 2.0,
        close_timeout: float = 1.0,
        level: int | str = logging.NOTSET,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        if not is_valid_name(name):
            raise LocalProtocolError(f"invalid client name: {name!r}")
        if token and not is_valid_token(token):
            raise LocalProtocolError("invalid token: " + TOKEN_RULE)
        if ssl_context is None and (tls or tls_ca or tls_cert):
            ssl_context = client_context(tls_ca, cert=tls_cert, key=tls_key)
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        super().__init__(level)
        self.client_name = name  # ``name`` is the handler's own name in logging's config
        self.host = host
        self.port = port
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.flush_timeout = flush_timeout
        self.close_timeout = close_timeout
        self._token = token
        self.ssl_context = ssl_context
        self.dropped = 0
        self._mutex = threading.Lock()
        self._wakeup = threading.Condition(self._mutex)  # the sender waits on it
        self._settled = threading.Condition(self._mutex)  # flush() waits on it
        self._queue: deque[str] = deque()
        self._inflight: list[str] = []  # sent, awaiting the PONG
        self._unreported = 0  # dropped records not yet reported to the server
        self._confirmed = 0
        self._connections = 0
        self._server_errors = 0
        self._connected = False
        self._last_error: str | None = None
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"logatron-handler-{name}", daemon=True
        )
        self._thread.start()

    # -- logging.Handler -----------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted record without blocking; drop and count it if the queue is full."""
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._mutex:
            if self._stopping or len(self._queue) + len(self._inflight) >= self.queue_size:
                self.dropped += 1
                self._unreported += 1
                return
            self._queue.append(text)
            self._wakeup.notify()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is confirmed by the server, at most ``timeout``
        seconds (``flush_timeout`` by default). Returns quietly when time runs out: check
        :meth:`stats` to know what is still queued.
        """
        wait = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._mutex:
            while self._queue or self._inflight or self._unreported:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    return
                self._settled.wait(remaining)

    def close(self) -> None:
        """Flush for up to ``close_timeout`` seconds, then stop the thread (idempotent).

        Records still unconfirmed then are lost; :meth:`stats` tells how many.
        """
        if not self._stopping:
            self.flush(self.close_timeout)
            with self._mutex:
                self._stopping = True
                self._wakeup.notify_all()
                self._settled.notify_all()
            self._thread.join(self.close_timeout)
        super().close()

    def stats(self) -> HandlerStats:
        """A snapshot of the counters."""
        with self._mutex:
            return HandlerStats(
                connected=self._connected,
                queued=len(self._queue) + len(self._inflight),
                confirmed=self._confirmed,
                dropped=self.dropped,
                connections=self._connections,
                server_errors=self._server_errors,
                last_error=self._last_error,
            )

    # -- the sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.min_backoff
        while not self._stopping:
            try:
                client = LogatronClient(
                    self.client_name,
                    self.host,
                    self.port,
                    timeout=self.timeout,
                    token=self._token,
                    ssl_context=self.ssl_context,
                )
            except Exception as error:  # OSError, ServerRefused; never let the thread die
                self._failed(error)
            else:
                with self._mutex:
                    self._connected = True
                    self._connections += 1
                try:
                    if self._pump(client):
                        backoff = self.min_backoff
                except Exception as error:
                    self._failed(error)
                finally:
                    client.close()
                    with self._mutex:
                        self._connected = False
                        self._queue.extendleft(reversed(self._inflight))
                        self._inflight = []
            with self._mutex:
                if not self._stopping:
                    self._wakeup.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _pump(self, client: LogatronClient) -> bool:
        """Send batches and confirm them until stopped (returns whether any PONG arrived);
        raises what the client raises when the connection fails."""
        confirmed_any = False
        last_ping = time.monotonic()
        while True:
            with self._mutex:
                while not (self._queue or self._unreported or self._stopping):
                    remaining = last_ping + self.flush_interval - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wakeup.wait(remaining)
                if self._stopping:
                    return confirmed_any
                batch = self._inflight = self._take_batch()
            if batch:
                client.log_many(batch)
            client.ping()
            last_ping = time.monotonic()
            confirmed_any = True
            errors = len(client.errors)
            client.errors.clear()
            with self._mutex:
                self._confirmed += len(batch)
                self._server_errors += errors
                self._inflight = []
                self._settled.notify_all()

    def _take_batch(self) -> list[str]:
        """Up to _MAX_BATCH queued records, after the drop report if one is owed (lock held)."""
        batch: list[str] = []
        if self._unreported:
            batch.append(f"logatron: {self._unreported} records dropped")
            self._unreported = 0
        queue = self._queue
        for _ in range(min(len(queue), _MAX_BATCH)):
            batch.append(queue.popleft())
        return batch

    def _failed(self, error: Exception) -> None:
        with self._mutex:
            self._last_error = f"{type(error).__name__}: {error}"
