"""The registry: every client's ring buffer of recent lines, its state, and who is listening.

Strategy: a client's log is a ring of *runs*: each run is the tuple of messages that arrived
together, with its first seq and its timestamp (the seqs of a run are consecutive). Storing a
run of a thousand lines is one ``deque.append``; eviction drops whole runs from the left and
skips into the oldest one, so the per-line cost of storing is nil. A run longer than the buffer
is sliced to its newest ``buffer_size`` messages first, so memory stays below twice the buffer.
Public results are built from the runs on demand and are always copies. The clock is never read
here: every call that changes something takes ``now`` (seconds since the epoch).

Events go to subscribers synchronously and in order; an exception raised by a subscriber is
counted in ``stats.subscriber_errors`` and never reaches ingest or the other subscribers.
"""

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from ._errors import ErrorCode, NameTaken, NoSuchClient, TooManyClients, TooManyKeys
from ._events import ClientClosed, ClientReady, LogEntry, Logged, RegistryEvent, StateSet
from ._limits import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
)

__all__ = ["ClientHandle", "ClientInfo", "Registry", "RegistryStats", "Subscriber"]

Subscriber = Callable[[RegistryEvent], object]
_Run = tuple[int, float, Sequence[str], bool]  # first seq, timestamp, messages, truncated


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
    """Server-wide counters (a copy when read from :attr:`Registry.stats`)."""

    connections_total: int = 0
    lines_received: int = 0
    bytes_received: int = 0
    lines_evicted: int = 0
    lines_truncated: int = 0
    subscriber_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class ClientHandle:
    """One client's record; opaque outside the registry (see :meth:`Registry.connect`)."""

    __slots__ = (
        "buffered",
        "connected",
        "connected_at",
        "disconnected_at",
        "errors",
        "evicted_through",
        "head_skip",
        "lines_evicted",
        "lines_received",
        "name",
        "runs",
        "state",
    )

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.runs: deque[_Run] = deque()
        self.head_skip = 0  # messages of runs[0] already evicted
        self.buffered = 0  # messages in the log
        self.state: dict[str, str] = {}
        self.connected = True
        self.connected_at = now
        self.disconnected_at: float | None = None
        self.lines_received = 0
        self.lines_evicted = 0
        self.evicted_through = 0  # seq of the newest evicted line, 0 if none
        self.errors = 0

    def store(self, run: _Run, buffer_size: int) -> int:
        """Append a run, evicting the oldest lines past ``buffer_size``; returns how many."""
        first, timestamp, messages, truncated = run
        count = len(messages)
        if count >= buffer_size:
            evicted = self.buffered + count - buffer_size
            keep = count - buffer_size
            if keep:
                self.evicted_through = first + keep - 1
            elif self.runs:
                last_first, _, last_messages, _ = self.runs[-1]
                self.evicted_through = last_first + len(last_messages) - 1
            self.runs.clear()
            self.runs.append((first + keep, timestamp, messages[keep:], truncated))
            self.head_skip, self.buffered = 0, buffer_size
            return evicted
        self.runs.append(run)
        self.buffered += count
        evicted = overflow = self.buffered - buffer_size
        while overflow > 0:
            head_first, _, head_messages, _ = self.runs[0]
            available = len(head_messages) - self.head_skip
            if available > overflow:
                self.head_skip += overflow
                self.evicted_through = head_first + self.head_skip - 1
                break
            self.runs.popleft()
            self.evicted_through = head_first + len(head_messages) - 1
            self.head_skip = 0
            overflow -= available
        if evicted <= 0:
            return 0
        self.buffered = buffer_size
        return evicted

    def oldest_seq(self) -> int | None:
        return self.runs[0][0] + self.head_skip if self.runs else None

    def count_since(self, since: int) -> int:
        """How many buffered lines have ``seq > since``."""
        count, skip = 0, self.head_skip
        for first, _, messages, _ in self.runs:
            count += max(0, len(messages) - max(skip, since - first + 1))
            skip = 0
        return count

    def backlog(self, since: int = 0) -> Iterator[Logged]:
        """The buffered runs, cut to the lines with ``seq > since``, oldest first."""
        name, skip = self.name, self.head_skip
        for first, timestamp, messages, truncated in self.runs:
            start = max(skip, since - first + 1)
            skip = 0
            if start < len(messages):
                kept = messages[start:] if start > 0 else messages
                yield Logged(name, first + start, timestamp, tuple(kept), truncated)

    def newest(self, count: int) -> list[Logged]:
        """The newest ``count`` buffered lines as runs, oldest first (no work for the others)."""
        if count <= 0:
            return []
        remaining = count
        for index in range(len(self.runs) - 1, -1, -1):
            first, _, messages, _ = self.runs[index]
            available = len(messages) - (self.head_skip if index == 0 else 0)
            if available >= remaining:
                return list(self.backlog(first + len(messages) - remaining - 1))
            remaining -= available
        return list(self.backlog())

    def entries(self, since: int = 0) -> Iterator[LogEntry]:
        """The buffered lines with ``seq > since``, oldest first."""
        for run in self.backlog(since):
            yield from run.entries()


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


class Registry:
    """All clients, connected and retained, and the subscribers to their events.

    Raises ValueError for a ``buffer_size``, ``max_clients`` or ``max_state_keys`` below 1 or a
    negative retention. ``retention_seconds=0`` or ``max_retained=0`` forgets a client as soon
    as it disconnects, as the original logatron did.
    """

    def __init__(
        self,
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
        self._clients: dict[str, ClientHandle] = {}
        self._retained: dict[str, None] = {}  # disconnected names, oldest first
        self._connected = 0
        self._last_seq = 0
        self._subscribers: list[Subscriber] = []
        self._stats = RegistryStats()

    # -- changes -------------------------------------------------------------------------------

    def connect(self, name: str, now: float) -> ClientHandle:
        """Mark ``name`` connected, resuming its retained record if there is one.

        Raises NameTaken if ``name`` is connected, TooManyClients at the limit; nothing changes
        then. Emits ClientReady.
        """
        self.expire(now)
        client = self._clients.get(name)
        if client is not None and client.connected:
            raise NameTaken(f"{name} is already connected")
        if self._connected >= self.max_clients:
            raise TooManyClients(f"the server holds its limit of {self.max_clients} clients")
        if client is None:
            client = self._clients[name] = ClientHandle(name, now)
        else:
            del self._retained[name]
            client.connected, client.connected_at, client.disconnected_at = True, now, None
        self._connected += 1
        self._stats.connections_total += 1
        self._emit(ClientReady(name, now))
        return client

    def append(
        self, client: ClientHandle, messages: Sequence[str], now: float, truncated: bool = False
    ) -> None:
        """Append a run of lines to ``client``'s log, evicting its oldest. Emits one Logged."""
        count = len(messages)
        if not count:
            return
        first = self._last_seq + 1
        self._last_seq += count
        if not isinstance(messages, tuple):
            messages = tuple(messages)  # stored and shared with subscribers: immutable
        evicted = client.store((first, now, messages, truncated), self.buffer_size)
        stats = self._stats
        if evicted:
            client.lines_evicted += evicted
            stats.lines_evicted += evicted
        client.lines_received += count
        stats.lines_received += count
        if truncated:
            stats.lines_truncated += count
        if self._subscribers:
            self._emit(Logged(client.name, first, now, messages, truncated))

    def set_state(self, client: ClientHandle, key: str, value: str, now: float) -> None:
        """Set one state key. Raises TooManyKeys for a new key past the limit (nothing stored).

        Emits StateSet.
        """
        state = client.state
        if key not in state and len(state) >= self.max_state_keys:
            raise TooManyKeys(f"{client.name} holds its limit of {self.max_state_keys} keys")
        state[key] = value
        self._emit(StateSet(client.name, key, value, now))

    def disconnect(self, client: ClientHandle, now: float) -> None:
        """Mark ``client`` disconnected; retain or forget its record. Emits ClientClosed.

        Does nothing for a client already disconnected.
        """
        if not client.connected:
            return
        client.connected, client.disconnected_at = False, now
        self._connected -= 1
        self._retained[client.name] = None
        self._emit(ClientClosed(client.name, now))
        self.expire(now)

    def expire(self, now: float) -> None:
        """Forget retained clients past the retention age or beyond the retained count."""
        retained = self._retained
        limit_age = self.retention_seconds if self.max_retained else 0.0
        while retained:
            oldest = next(iter(retained))
            disconnected_at = self._clients[oldest].disconnected_at
            assert disconnected_at is not None
            if len(retained) <= self.max_retained and now - disconnected_at < limit_age:
                break
            del retained[oldest]
            del self._clients[oldest]

    def count_error(self, client: ClientHandle | None, code: ErrorCode) -> None:
        """Record that the server answered ``ERR <code>`` (to ``client``, if identified)."""
        errors = self._stats.errors
        errors[code.value] = errors.get(code.value, 0) + 1
        if client is not None:
            client.errors += 1

    def count_bytes(self, count: int) -> None:
        self._stats.bytes_received += count

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every later event; returns the unsubscribe call."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def _emit(self, event: RegistryEvent) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                self._stats.subscriber_errors += 1

    # -- queries (all results are copies) ------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the newest line stored so far (0 before any)."""
        return self._last_seq

    @property
    def connected_count(self) -> int:
        return self._connected

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def stats(self) -> RegistryStats:
        stats = self._stats
        return RegistryStats(
            stats.connections_total,
            stats.lines_received,
            stats.bytes_received,
            stats.lines_evicted,
            stats.lines_truncated,
            stats.subscriber_errors,
            dict(stats.errors),
        )

    def names(self) -> list[str]:
        """Names of every client, connected or retained, sorted."""
        return sorted(self._clients)

    def clients(self, *, log_limit: int | None = None) -> dict[str, ClientInfo]:
        """Every client's record by name, each with its newest ``log_limit`` lines."""
        return {name: self.client(name, log_limit=log_limit) for name in self.names()}

    def client(self, name: str, *, log_limit: int | None = None) -> ClientInfo:
        """One client's record, with its newest ``log_limit`` lines (all if None).

        Raises NoSuchClient.
        """
        client = self._get(name)
        runs = client.backlog() if log_limit is None else client.newest(log_limit)
        log = [entry for run in runs for entry in run.entries()]
        return ClientInfo(
            client.name,
            client.connected,
            client.connected_at,
            client.disconnected_at,
            dict(client.state),
            log,
            client.lines_received,
            client.lines_evicted,
            client.errors,
        )

    def log(self, name: str, since: int = 0, limit: int | None = None) -> list[LogEntry]:
        """``name``'s buffered lines with ``seq > since``, oldest first, at most ``limit``.

        Raises NoSuchClient.
        """
        return list(islice(self._get(name).entries(since), limit))

    def state(self, name: str) -> dict[str, str]:
        """``name``'s state. Raises NoSuchClient."""
        return dict(self._get(name).state)

    def oldest_seq(self, name: str) -> int | None:
        """The seq of ``name``'s oldest buffered line, None if none. Raises NoSuchClient."""
        return self._get(name).oldest_seq()

    def recent(
        self, since: int = 0, client: str | None = None, limit: int | None = None
    ) -> list[LogEntry]:
        """Buffered lines with ``seq > since`` of every client (or one), ordered by seq.

        Raises NoSuchClient for an unknown ``client``.
        """
        entries = (entry for run in self.backlog(since, client) for entry in run.entries())
        return list(islice(entries, limit))

    def newest(self, name: str, count: int) -> list[Logged]:
        """``name``'s newest ``count`` buffered lines as runs, oldest first. Raises
        NoSuchClient."""
        return self._get(name).newest(count)

    def backlog(self, since: int = 0, client: str | None = None) -> list[Logged]:
        """The buffered lines with ``seq > since`` of every client (or one) as runs, ordered by
        seq: cheap (no per-line work), for a tail's snapshot. Raises NoSuchClient.

        The seqs of one run are consecutive and given out at once, so runs never interleave.
        """
        if client is not None:
            return list(self._get(client).backlog(since))
        runs = [run for handle in self._clients.values() for run in handle.backlog(since)]
        runs.sort(key=lambda run: run.first_seq)
        return runs

    def missed_since(self, since: int, client: str | None = None) -> int:
        """How many lines with ``seq > since`` are no longer buffered (evicted or forgotten).

        Exact across all clients. For one ``client`` it is an upper bound whenever its lines
        interleave with other clients' (the registry does not keep the seq of every evicted
        line); 0 for a name it does not know.
        """
        if client is None:
            buffered = sum(handle.count_since(since) for handle in self._clients.values())
            return max(0, self._last_seq - since - buffered)
        handle = self._clients.get(client)
        if handle is None or since >= handle.evicted_through:
            return 0
        return min(handle.lines_evicted, handle.evicted_through - since)

    def _get(self, name: str) -> ClientHandle:
        try:
            return self._clients[name]
        except KeyError:
            raise NoSuchClient(name) from None
