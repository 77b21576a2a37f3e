"""Registry events through a bounded queue, for the tail, ``LogatronServer.events()`` and tests.

The subscriber side never waits: it runs inside ingest. Past the bound, lines are dropped and
counted, and the consumer gets one :class:`Lagged` notice in their place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import anyio
import anyio.lowlevel

from logatron_core import Logged, LogSource, RegistryEvent, Snapshot

__all__ = ["EventStream", "Lagged"]


@dataclass(frozen=True, slots=True)
class Lagged:
    """The consumer of an :class:`EventStream` fell behind: ``missed`` lines (and other events,
    one each) were dropped here, between the event before this notice and the one after it."""

    missed: int


def _weight(event: RegistryEvent) -> int:
    """What an event costs in a queue: a run of lines weighs its length, anything else 1."""
    return len(event.messages) if isinstance(event, Logged) else 1


def _accepted(
    source: LogSource, snapshot: Snapshot, since: int, accepts: Callable[[str], bool]
) -> Snapshot:
    """``snapshot`` (of every client) cut to the clients ``accepts`` takes. Called right after
    ``follow``, with no await in between: the per-client reads see the same instant."""
    runs = [run for run in snapshot.runs if accepts(run.name)]
    missed = snapshot.missed
    if missed:
        names = [name for name in source.names() if accepts(name)]
        missed = min(missed, sum(source.snapshot(since, name).missed for name in names))
    return Snapshot(runs, snapshot.last_seq, missed)


class EventStream:
    """Registry events through a bounded queue; an async iterator and an async context manager.

    Subscribes at creation, to every client, to ``client`` only (a name), or to the clients
    whose name ``client`` accepts (a predicate, such as a ``ClientFilter``: clients that connect
    later included); with ``since``, it also takes ``source``'s snapshot after that cursor in
    the same step (``snapshot``), so that every line is either in the snapshot or in the stream,
    never both. With a predicate, the snapshot holds the accepted clients' runs and its
    ``missed`` counts the lines missed of the accepted clients ``source`` still knows. The
    subscriber never waits: when ``max_queue`` lines are queued (a run of lines counts its
    length, other events one), later events are dropped and the consumer then receives a
    :class:`Lagged` notice, in order, before the events kept after the drop. One event larger
    than the bound is still queued when the queue is empty, so memory stays within the bound
    plus one chunk's lines. ``on_drop(count)``, if given, is called as lines are dropped (for
    metrics). ``aclose()`` (or leaving the ``async with`` block) unsubscribes and ends the
    iteration. Raises ValueError for ``max_queue`` below 1.
    """

    __slots__ = (
        "_accepts",
        "_closed",
        "_max_queue",
        "_missed",
        "_on_drop",
        "_queue",
        "_queued",
        "_unsubscribe",
        "_wakeup",
        "snapshot",
    )

    def __init__(
        self,
        source: LogSource,
        max_queue: int = 1000,
        *,
        client: str | Callable[[str], bool] | None = None,
        on_drop: Callable[[int], object] | None = None,
        since: int | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self._max_queue = max_queue
        # Whether an event's client is followed (None: every client).
        self._accepts = client.__eq__ if isinstance(client, str) else client
        self._on_drop = on_drop
        self._queue: deque[RegistryEvent | Lagged] = deque()
        self._queued = 0  # weight of what is queued
        self._missed = 0
        self._wakeup: anyio.Event | None = None
        self._closed = False
        self.snapshot: Snapshot | None = None
        if since is None:
            self._unsubscribe = source.subscribe(self._put)
        elif client is None or isinstance(client, str):
            self.snapshot, self._unsubscribe = source.follow(self._put, since, client)
        else:
            snapshot, self._unsubscribe = source.follow(self._put, since, None)
            self.snapshot = _accepted(source, snapshot, since, client)

    def _put(self, event: RegistryEvent) -> None:
        accepts = self._accepts
        if accepts is not None and not accepts(event.name):
            return
        weight = _weight(event)
        if self._queued and self._queued + weight > self._max_queue:
            self._missed += weight
            if self._on_drop is not None:
                self._on_drop(weight)
            return
        if self._missed:
            self._queue.append(Lagged(self._missed))
            self._missed = 0
        self._queue.append(event)
        self._queued += weight
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> RegistryEvent | Lagged:
        """The next event (or Lagged notice); waits for one. Ends once closed."""
        await self.wait()
        if self._closed:
            raise StopAsyncIteration
        await anyio.lowlevel.checkpoint()
        if not self._queue:
            missed, self._missed = self._missed, 0
            return Lagged(missed)
        item = self._queue.popleft()
        if not isinstance(item, Lagged):
            self._queued -= _weight(item)
        return item

    @property
    def ready(self) -> bool:
        """Whether ``drain()`` has something to give now."""
        return bool(self._queue or self._missed)

    async def wait(self) -> None:
        """Return once an event or a Lagged notice is ready, or the stream is closed."""
        while not (self._queue or self._missed or self._closed):
            wakeup = self._wakeup = anyio.Event()
            await wakeup.wait()

    def drain(self, max_lines: int | None = None) -> list[RegistryEvent | Lagged]:
        """What is ready now, without waiting: every queued event, or events until they hold
        ``max_lines`` lines (at least one event). A pending Lagged notice comes last, once the
        queue is empty."""
        items: list[RegistryEvent | Lagged] = []
        queue = self._queue
        taken = 0
        while queue and (max_lines is None or taken < max_lines):
            item = queue.popleft()
            if not isinstance(item, Lagged):
                weight = _weight(item)
                self._queued -= weight
                taken += weight
            items.append(item)
        if not queue and self._missed:
            items.append(Lagged(self._missed))
            self._missed = 0
        return items

    def close(self) -> None:
        """Unsubscribe; iteration ends (queued events are discarded)."""
        self._closed = True
        self._unsubscribe()
        self._queue.clear()
        self._wake()

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends (queued events are discarded)."""
        self.close()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
