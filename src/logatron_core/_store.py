"""The store interface: where client records live, and what adapters may read of them.

Three protocols, one concern each:

- :class:`StoreReader` — the queries every front end answers (client records, log pages, state,
  recent lines) and :meth:`~StoreReader.snapshot`, the buffered runs after a cursor together
  with the newest seq and how many lines after the cursor are gone, taken in one step.
- :class:`Store` — a reader plus the writes a :class:`~logatron_core.Registry` makes. Every
  write that a shared store must decide atomically takes the limit it enforces (``connect``
  gets ``max_clients``, ``append`` the ring size, ``set_state`` the key limit) and *returns*
  what it decided: ``append`` gives the seq of the run's first line, because in a store shared
  by several front ends (Redis) seqs can only be handed out by the store, atomically with the
  append. :class:`~logatron_core.MemoryStore` is the reference implementation and the default.
- :class:`LogSource` — a reader plus subscription: what the HTTP layer, the tail and
  ``EventStream`` are typed against. :meth:`~LogSource.follow` subscribes and snapshots in one
  call, so the tail's seam between backlog and live never rests on "no await in between".

The registry keeps the policy: it validates limits, fans events out (every change, expiry
included, is an event), counts, and tells adapters when it next needs waking (retention).

Stores that do I/O. The core never awaits, and ``Session`` answers from what ``receive_data``
returns, so a store that writes to a disk or a network is driven by its adapter around an
in-memory :class:`Store`, never called from inside the core:

- a journal (SQLite): the memory store stays the working set that serves every read; the
  registry's events say what changed (runs with their seqs, state, connects, expiry); the
  adapter batches them to disk in a worker thread and holds each ``PONG`` until the batch
  holding the lines before its ``PING`` is durable; at start it rebuilds the memory store from
  the stored records (``connect``/``append``/``set_state``/``disconnect`` replayed with the
  stored seqs) before listening.
- a shared store (Redis): the claims and seqs are decided by Lua scripts on the server; the
  adapter's ``Store`` implementation keeps a local mirror (a memory store fed by the shared
  stream every front end appends to) for reads and snapshots, and its writes go to Redis,
  with ``PONG`` held until Redis has acknowledged them.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ._events import LogEntry, Logged, RegistryEvent
from ._lines import Lines

__all__ = [
    "ClientInfo",
    "LogSource",
    "RegistryStats",
    "Snapshot",
    "Store",
    "StoreReader",
    "StoredClient",
    "StoredRun",
    "Subscriber",
]

Subscriber = Callable[[RegistryEvent], object]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A copy of one client's record."""

    name: str
    connected: bool
    connected_at: float
    disconnected_at: float | None
    state: dict[str, str]
    log: list[LogEntry]
    lines_received: int
    lines_evicted: int
    errors: int


@dataclass(slots=True)
class RegistryStats:
    """The counters of one registry (one front end), as a copy."""

    connections_total: int = 0  # clients that identified themselves
    connections_open: int = 0  # sessions (TCP connections) not yet closed
    connected: int = 0  # clients connected now
    retained: int = 0  # disconnected clients retained now
    subscribers: int = 0
    lines_received: int = 0
    bytes_received: int = 0
    lines_evicted: int = 0
    lines_truncated: int = 0
    clients_expired: int = 0
    replies_dropped: int = 0  # reply lines dropped for peers that do not read
    subscriber_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # ERR replies by code


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The buffered lines after a cursor, as of one instant.

    ``runs``: every buffered run (or its part) with ``seq > since``, ordered by seq; the runs
    are shared with the store, not copied line by line. ``last_seq``: the newest seq given out.
    ``missed``: how many lines with ``seq > since`` are no longer buffered (exact across all
    clients; an upper bound for one client, whose evictions may interleave with others').
    """

    runs: list[Logged]
    last_seq: int
    missed: int


@dataclass(frozen=True, slots=True)
class StoredClient:
    """One client's record as stored, without its log. ``oldest_seq`` is the seq of the oldest
    line its ring holds (every stored run of it that ends before is deleted)."""

    name: str
    connected: bool
    connected_at: float
    disconnected_at: float | None
    state: dict[str, str]
    lines_received: int
    lines_evicted: int
    evicted_through: int
    errors: int
    oldest_seq: int


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run of lines as stored: one row, its messages joined by ``"\\n"`` (no message holds
    one: the protocol is line-based)."""

    client: str
    first_seq: int
    timestamp: float
    messages: tuple[str, ...]
    truncated: bool

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.messages) - 1


class StoreReader(Protocol):
    """What can be read of the stored records. Results are copies; the caller owns them."""

    @property
    def last_seq(self) -> int:
        """The seq of the newest line stored so far (0 before any)."""
        ...

    def names(self) -> list[str]:
        """Names of every client, connected or retained, sorted."""
        ...

    def client(self, name: str, *, log_limit: int | None = None) -> ClientInfo:
        """One client's record with its newest ``log_limit`` lines (all if None).

        Raises NoSuchClient.
        """
        ...

    def clients(self, *, log_limit: int | None = None) -> dict[str, ClientInfo]:
        """Every client's record by name, each with its newest ``log_limit`` lines."""
        ...

    def log(self, name: str, since: int = 0, limit: int | None = None) -> list[LogEntry]:
        """``name``'s buffered lines with ``seq > since``, oldest first, at most ``limit``.

        Raises NoSuchClient.
        """
        ...

    def newest(self, name: str, count: int) -> list[Logged]:
        """``name``'s newest ``count`` buffered lines as runs, oldest first.

        Raises NoSuchClient.
        """
        ...

    def state(self, name: str) -> dict[str, str]:
        """``name``'s state. Raises NoSuchClient."""
        ...

    def recent(
        self, since: int = 0, client: str | None = None, limit: int | None = None
    ) -> list[LogEntry]:
        """Buffered lines with ``seq > since`` of every client (or one), ordered by seq.

        Raises NoSuchClient for an unknown ``client``.
        """
        ...

    def snapshot(self, since: int = 0, client: str | None = None) -> Snapshot:
        """The buffered runs after ``since`` (of every client, or ``client``'s), ``last_seq``
        and the lines missed, in one step. Raises NoSuchClient for an unknown ``client``."""
        ...

    def counts(self) -> tuple[int, int]:
        """(connected clients, retained clients)."""
        ...


class Store(StoreReader, Protocol):
    """A reader plus the writes a registry makes. Each write either happens whole or raises
    (a RegistryRefusal) and changes nothing."""

    def connect(self, name: str, now: float, max_clients: int) -> None:
        """Mark ``name`` connected, resuming its retained record or creating one.

        Raises NameTaken if it is connected, TooManyClients if ``max_clients`` are.
        """
        ...

    def append(
        self,
        name: str,
        messages: Lines,
        now: float,
        truncated: bool,
        buffer_size: int,
    ) -> tuple[int, int]:
        """Append a run to ``name``'s ring, evicting past ``buffer_size`` lines.

        ``messages`` is never empty; ``messages.encoded()`` gives its bytes without parsing
        them when it has some. Returns (seq of the first line, lines evicted). ``name`` must be
        connected.
        """
        ...

    def set_state(self, name: str, key: str, value: str, max_keys: int) -> None:
        """Set one state key. Raises TooManyKeys for a new key past ``max_keys``."""
        ...

    def disconnect(self, name: str, now: float) -> bool:
        """Mark ``name`` disconnected and retained; False if it was not connected."""
        ...

    def expire(self, now: float, retention_seconds: float, max_retained: int) -> list[str]:
        """Forget retained clients disconnected ``retention_seconds`` ago or more, and the
        oldest past ``max_retained``; returns their names, oldest first."""
        ...

    def oldest_disconnect(self) -> float | None:
        """When the longest-retained client disconnected (None if none is retained)."""
        ...

    def count_error(self, name: str) -> None:
        """Count one ``ERR`` answered to ``name``."""
        ...


class LogSource(StoreReader, Protocol):
    """A reader plus subscription: what the adapters' HTTP layer and tails are typed against."""

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every later event; returns the unsubscribe call."""
        ...

    def follow(
        self, subscriber: Subscriber, since: int = 0, client: str | None = None
    ) -> tuple[Snapshot, Callable[[], None]]:
        """Subscribe and take ``snapshot(since, client)`` in one step: every line is either in
        the snapshot or delivered to ``subscriber`` afterwards, never both, never neither.

        An unknown ``client`` gives an empty snapshot (a tail may wait for a client that has
        not connected yet). Returns the snapshot and the unsubscribe call.
        """
        ...

    @property
    def stats(self) -> RegistryStats:
        """A copy of the counters."""
        ...
