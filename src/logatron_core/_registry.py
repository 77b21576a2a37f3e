"""The registry: the policy over a store — limits, retention, counters and event fan-out.

Every change goes through here, is applied to the :class:`~logatron_core.Store` (a
:class:`~logatron_core.MemoryStore` by default) and announced to subscribers as an event:
``ClientReady``, ``Logged``, ``StateSet``, ``ClientClosed`` and ``ClientExpired``. Reads are
the store's (the registry is a :class:`~logatron_core.LogSource`). The clock is never read here:
every call that changes something takes ``now`` (seconds since the epoch), and
:meth:`Registry.next_deadline` tells the adapter when to call :meth:`Registry.expire` next.

Events go to subscribers synchronously and in order; an exception raised by a subscriber is
counted in ``stats.subscriber_errors`` and never reaches ingest or the other subscribers.

Confirmation (for stores that write to a disk or a network): every change advances ``mark``.
After :meth:`Registry.hold_pongs`, a session answers a ``PING`` only once the adapter has
called :meth:`Registry.confirm` with a mark at least the one current when the ``PING`` was
applied, that is once every line before it is stored for good. Without it (the default, a
memory store) a ``PONG`` is answered at once.
"""

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ._errors import ErrorCode, NoSuchClient
from ._events import (
    ClientClosed,
    ClientExpired,
    ClientReady,
    LogEntry,
    Logged,
    RegistryEvent,
    StateSet,
)
from ._limits import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
)
from ._lines import Lines
from ._memory import MemoryStore
from ._store import ClientInfo, RegistryStats, Snapshot, Store, Subscriber

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["Registry"]


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


class Registry:
    """All clients, connected and retained, in ``store``, and the subscribers to their events.

    Raises ValueError for a ``buffer_size``, ``max_clients`` or ``max_state_keys`` below 1 or a
    negative retention. ``retention_seconds=0`` or ``max_retained=0`` forgets a client as soon
    as it disconnects, as the original logatron did.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_state_keys: int = DEFAULT_MAX_STATE_KEYS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        max_retained: int = DEFAULT_MAX_RETAINED,
    ) -> None:
        if retention_seconds < 0 or max_retained < 0:
            raise ValueError("retention_seconds and max_retained must not be negative")
        self.buffer_size = _positive("buffer_size", buffer_size)
        self.max_clients = _positive("max_clients", max_clients)
        self.max_state_keys = _positive("max_state_keys", max_state_keys)
        self.retention_seconds = retention_seconds
        self.max_retained = max_retained
        self.store: Store = store if store is not None else MemoryStore()
        self._subscribers: list[Subscriber] = []
        self._stats = RegistryStats()
        self.mark = 0  # advanced by every change
        self._confirmed: int | None = None  # None: nothing to wait for
        self._waiting: dict[Session, None] = {}  # sessions holding a PONG, in order

    # -- changes -------------------------------------------------------------------------------

    def connect(self, name: str, now: float, *, origin: object = None) -> None:
        """Mark ``name`` connected, resuming its retained record if there is one.

        Raises NameTaken if ``name`` is connected, TooManyClients at the limit; nothing changes
        then. Emits ClientReady. ``origin`` (the session asking) matters only to registries
        whose changes are decided elsewhere (RemoteRegistry); so for every change.
        """
        self.expire(now)
        self.store.connect(name, now, self.max_clients)
        self.mark += 1
        self._stats.connections_total += 1
        self._emit(ClientReady(name, now))

    def append(
        self,
        name: str,
        messages: Sequence[str],
        now: float,
        truncated: bool = False,
        *,
        origin: object = None,
    ) -> None:
        """Append a run of lines to connected ``name``'s log, evicting its oldest.

        ``messages`` may be a :class:`Lines` (kept as it is: a run from the wire stays the
        bytes it arrived in). Emits one Logged.
        """
        count = len(messages)
        if not count:
            return
        lines = messages if type(messages) is Lines else Lines(messages)  # immutable, shared
        first, evicted = self.store.append(name, lines, now, truncated, self.buffer_size)
        self.mark += 1
        stats = self._stats
        stats.lines_received += count
        if evicted:
            stats.lines_evicted += evicted
        if truncated:
            stats.lines_truncated += count
        if self._subscribers:
            self._emit(Logged(name, first, now, lines, truncated))

    def set_state(
        self, name: str, key: str, value: str, now: float, *, origin: object = None
    ) -> None:
        """Set one state key. Raises TooManyKeys for a new key past the limit (nothing stored).

        Emits StateSet.
        """
        self.store.set_state(name, key, value, self.max_state_keys)
        self.mark += 1
        self._emit(StateSet(name, key, value, now))

    def disconnect(self, name: str, now: float, *, origin: object = None) -> None:
        """Mark ``name`` disconnected; retain or forget its record. Emits ClientClosed.

        Does nothing for a client already disconnected.
        """
        if self.store.disconnect(name, now):
            self.mark += 1
            self._emit(ClientClosed(name, now))
            self.expire(now)

    def expire(self, now: float) -> None:
        """Forget retained clients past the retention age or beyond the retained count.

        Emits ClientExpired for each, oldest first.
        """
        for name in self.store.expire(now, self.retention_seconds, self.max_retained):
            self.mark += 1
            self._stats.clients_expired += 1
            self._emit(ClientExpired(name, now))

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work (seconds since the epoch); None while no client
        is retained. Adapters sleep until then (or until a disconnect, which expires by
        itself)."""
        oldest = self.store.oldest_disconnect()
        return None if oldest is None else oldest + self.retention_seconds

    def count_error(self, name: str | None, code: ErrorCode) -> None:
        """Record that the server answered ``ERR <code>`` (to ``name``, if identified)."""
        errors = self._stats.errors
        errors[code.value] = errors.get(code.value, 0) + 1
        if name is not None:
            self.store.count_error(name)

    def count_bytes(self, count: int) -> None:
        self._stats.bytes_received += count

    def count_replies_dropped(self, count: int) -> None:
        self._stats.replies_dropped += count

    def count_connection(self, delta: int) -> None:
        """A session opened (+1) or closed (-1)."""
        self._stats.connections_open += delta

    # -- confirmation --------------------------------------------------------------------------

    def hold_pongs(self) -> None:
        """From now on, ``PONG`` waits for :meth:`confirm` (see the module comment)."""
        if self._confirmed is None:
            self._confirmed = self.mark

    @property
    def confirmed(self) -> bool:
        """True when every change so far is confirmed (always, without :meth:`hold_pongs`)."""
        return self._confirmed is None or self._confirmed >= self.mark

    @property
    def pongs_waiting(self) -> bool:
        """True while some session holds a ``PONG`` for a confirmation."""
        return bool(self._waiting)

    def pong_allowed(self, session: "Session") -> int | None:
        """None if ``session`` may answer a ``PING`` now; otherwise the mark to wait for (the
        session is then told through ``release_pongs`` once it is confirmed)."""
        if self.confirmed:
            return None
        self._waiting[session] = None
        return self.mark

    def confirm(self, mark: int) -> None:
        """Every change up to ``mark`` is stored for good: sessions answer the ``PING``s that
        waited for it (their ``on_replies`` callbacks run)."""
        if self._confirmed is None or mark <= self._confirmed:
            return
        self._confirmed = mark
        for session in list(self._waiting):
            if session.release_pongs(mark):
                del self._waiting[session]

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every later event; returns the unsubscribe call."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def follow(
        self, subscriber: Subscriber, since: int = 0, client: str | None = None
    ) -> tuple[Snapshot, Callable[[], None]]:
        """Subscribe and snapshot in one step (see LogSource.follow)."""
        unsubscribe = self.subscribe(subscriber)
        try:
            snapshot = self.store.snapshot(since, client)
        except NoSuchClient:
            snapshot = Snapshot([], self.store.last_seq, 0)
        return snapshot, unsubscribe

    def _emit(self, event: RegistryEvent) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                self._stats.subscriber_errors += 1

    # -- queries (the store's; all results are copies) ------------------------------------------

    @property
    def stats(self) -> RegistryStats:
        """A copy of the counters, with the store's counts and the subscribers as of now."""
        connected, retained = self.store.counts()
        return replace(
            self._stats,
            connected=connected,
            retained=retained,
            subscribers=len(self._subscribers),
            errors=dict(self._stats.errors),
        )

    @property
    def last_seq(self) -> int:
        """The seq of the newest line stored so far (0 before any)."""
        return self.store.last_seq

    def counts(self) -> tuple[int, int]:
        """(connected clients, retained clients)."""
        return self.store.counts()

    def names(self) -> list[str]:
        """Names of every client, connected or retained, sorted."""
        return self.store.names()

    def clients(self, *, log_limit: int | None = None) -> dict[str, ClientInfo]:
        """Every client's record by name, each with its newest ``log_limit`` lines."""
        return self.store.clients(log_limit=log_limit)

    def client(self, name: str, *, log_limit: int | None = None) -> ClientInfo:
        """One client's record, with its newest ``log_limit`` lines (all if None).

        Raises NoSuchClient.
        """
        return self.store.client(name, log_limit=log_limit)

    def log(self, name: str, since: int = 0, limit: int | None = None) -> list[LogEntry]:
        """``name``'s buffered lines with ``seq > since``, oldest first, at most ``limit``.

        Raises NoSuchClient.
        """
        return self.store.log(name, since, limit)

    def newest(self, name: str, count: int) -> list[Logged]:
        """``name``'s newest ``count`` buffered lines as runs, oldest first. Raises
        NoSuchClient."""
        return self.store.newest(name, count)

    def state(self, name: str) -> dict[str, str]:
        """``name``'s state. Raises NoSuchClient."""
        return self.store.state(name)

    def recent(
        self, since: int = 0, client: str | None = None, limit: int | None = None
    ) -> list[LogEntry]:
        """Buffered lines with ``seq > since`` of every client (or one), ordered by seq.

        Raises NoSuchClient for an unknown ``client``.
        """
        return self.store.recent(since, client, limit)

    def snapshot(self, since: int = 0, client: str | None = None) -> Snapshot:
        """The buffered runs after ``since``, ``last_seq`` and the lines missed (see Snapshot).

        Raises NoSuchClient for an unknown ``client``.
        """
        return self.store.snapshot(since, client)
