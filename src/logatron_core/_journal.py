"""The sans-IO half of a durable store: what to write after each change, and how to rebuild.

A :class:`Journal` follows a registry whose working set is a :class:`MemoryStore`. It keeps,
per client changed since the last write, the runs appended meanwhile (trimmed to what the ring
can still hold, so a line evicted before the next write never reaches the disk: write volume
is bounded by the rings, not by the ingest rate), and the names forgotten. :meth:`Journal.take`
turns that into one :class:`Batch`: the changed clients' records (state and counters, and the
seq of the oldest line their ring still holds, below which stored runs are deleted), their new
runs, the forgotten names and the seq high-water mark. The adapter writes a batch in one
transaction and reports :meth:`Journal.written` (which confirms the registry's ``PONG``s) or
:meth:`Journal.failed` (the batch's changes are kept for the next one).

At start the adapter reads the stored records back and calls :func:`rebuild`, which loads
them into a memory store: every client comes back disconnected (a client connected when the
server stopped is retained from the restart on), seqs continue above the highest stored.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ._events import ClientClosed, ClientExpired, ClientReady, Logged, RegistryEvent, StateSet
from ._memory import MemoryStore
from ._registry import Registry
from ._store import Store, StoredClient, StoredRun

__all__ = ["Batch", "Journal", "rebuild"]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one write stores: forget ``forgotten`` first, then upsert ``clients`` (deleting
    their runs before each one's ``oldest_seq``), insert ``runs``, record ``last_seq``. Once
    written, the registry's changes up to ``mark`` are durable."""

    mark: int
    last_seq: int
    clients: list[StoredClient]
    runs: list[StoredRun]
    forgotten: list[str]


class Journal:
    """Follows ``registry`` (whose store must be ``store``) and says what changed.

    Subscribes at creation and makes the registry hold ``PONG``s until :meth:`written`.
    """

    def __init__(self, registry: Registry, store: MemoryStore) -> None:
        if registry.store is not store:
            raise ValueError("the journal must follow the registry's own memory store")
        self._registry = registry
        self._store = store
        self._changed: dict[str, deque[Logged]] = {}  # name -> runs appended since the write
        self._forgotten: dict[str, None] = {}
        self._pending_lines: dict[str, int] = {}
        # Called once a line's seq passes ``write_after_seq`` (the adapter's seqs reserved on
        # disk run low: write soon).
        self.write_after_seq: int | None = None
        self.on_write_wanted: Callable[[], object] | None = None
        registry.subscribe(self._on_event)
        registry.hold_pongs()

    @property
    def dirty(self) -> bool:
        """True when something changed since the last batch was taken."""
        return bool(self._changed or self._forgotten)

    def _on_event(self, event: RegistryEvent) -> None:
        if isinstance(event, Logged):
            runs = self._changed.setdefault(event.name, deque())
            runs.append(event)
            lines = self._pending_lines.get(event.name, 0) + len(event.messages)
            # Keep no more than the ring holds: what it evicted need not reach the disk.
            limit = self._registry.buffer_size
            while runs and lines - len(runs[0].messages) >= limit:
                lines -= len(runs.popleft().messages)
            self._pending_lines[event.name] = lines
            after = self.write_after_seq
            if after is not None and event.last_seq > after and self.on_write_wanted is not None:
                self.on_write_wanted()
        elif isinstance(event, ClientReady | StateSet | ClientClosed):
            self._changed.setdefault(event.name, deque())
        elif isinstance(event, ClientExpired):
            self._changed.pop(event.name, None)
            self._pending_lines.pop(event.name, None)
            self._forgotten[event.name] = None

    def take(self) -> Batch | None:
        """The changes since the last batch as one batch (None if nothing changed)."""
        if not self.dirty:
            return None
        store = self._store
        clients: list[StoredClient] = []
        runs: list[StoredRun] = []
        for name, pending in self._changed.items():
            client = store.stored_client(name)
            clients.append(client)
            runs += (
                StoredRun(name, run.first_seq, run.timestamp, tuple(run.messages), run.truncated)
                for run in pending
                if run.last_seq >= client.oldest_seq
            )
        batch = Batch(self._registry.mark, store.last_seq, clients, runs, list(self._forgotten))
        self._changed, self._forgotten, self._pending_lines = {}, {}, {}
        return batch

    def written(self, batch: Batch) -> None:
        """``batch`` is stored for good: confirm its changes to the registry."""
        self._registry.confirm(batch.mark)

    def failed(self, batch: Batch) -> None:
        """``batch`` was not stored: its changes go into the next one."""
        forgotten_since = set(self._forgotten)  # expired after the batch was taken
        for name in batch.forgotten:
            # A batch forgets before it upserts, so a name forgotten and connected again
            # within it is forgotten again, then written anew.
            self._forgotten.setdefault(name, None)
        taken: dict[str, deque[Logged]] = {}
        for run in batch.runs:
            logged = Logged(run.client, run.first_seq, run.timestamp, run.messages, run.truncated)
            taken.setdefault(run.client, deque()).append(logged)
        for client in batch.clients:
            if client.name in forgotten_since:
                continue  # that record is gone: what the batch had of it is moot
            later = self._changed.pop(client.name, deque())
            runs = taken.get(client.name, deque())
            runs.extend(later)
            self._changed[client.name] = runs
            self._pending_lines[client.name] = sum(len(run.messages) for run in runs)


def rebuild(
    store: Store,
    clients: list[StoredClient],
    runs: list[StoredRun],
    last_seq: int,
    now: float,
) -> MemoryStore:
    """A memory store holding what was stored: ``store`` must be a new, empty MemoryStore.

    Every client comes back disconnected; one that was connected is retained from ``now``.
    Runs are given oldest first per client or in any order (they are sorted by seq here).
    """
    if not isinstance(store, MemoryStore) or store.names():
        raise ValueError("rebuild needs a new, empty MemoryStore")
    by_client: dict[str, list[StoredRun]] = {}
    for run in sorted(runs, key=lambda run: run.first_seq):
        by_client.setdefault(run.client, []).append(run)
    retained = sorted(clients, key=lambda c: now if c.connected else c.disconnected_at or now)
    for client in retained:
        store.restore(client, by_client.get(client.name, []), now)
    store.restore_last_seq(max(last_seq, *(run.last_seq for run in runs), 0))
    return store
