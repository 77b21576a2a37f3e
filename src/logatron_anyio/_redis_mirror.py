"""The replicator: keeps a front end's mirror in step with the change stream in Redis.

It reads ``logatron:changes`` with ``XREAD BLOCK`` from the last id it applied and applies each
change to the registry's mirror (``RemoteRegistry.apply_*``, which emit the events tails
follow). A change says where its run came from: the runs this front end sent are taken from
the batches it keeps until they are mirrored (:meth:`Mirror.sent`), the others' are read from
their front end's bodies in Redis (one ``XRANGE`` per front end and read) and stay the bytes
they came in (``logatron_core.decode_run``), parsed only if something reads them.

Every change carries its number: one that does not follow the last applied (the front end
fell more than ``CHANGES_MAXLEN`` behind, or Redis restarted and lost changes), or a run whose
body is gone, makes it load the whole mirror anew from one atomic snapshot, as at start. An
idle replicator checks once per ``READ_BLOCK_MS`` that Redis did not go back.

It also answers the ``PONG``s: the driver tells it the change number Redis had reached when
it acknowledged each batch (:meth:`Mirror.expect`), and the PINGs after that batch are
answered once the mirror has applied that far, so a client reads its own lines back from the
front end that answered its ``PONG``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from logatron_core import LogatronError, RemoteRegistry

from ._redis_client import FAILURES, Client, Scripts, StreamEntry
from ._redis_codec import Batch, apply_change, load_snapshot, run_place

__all__ = ["READ_BLOCK_MS", "Mirror"]

logger = logging.getLogger("logatron.store")

CHANGES = b"logatron:changes"
BODIES = b"logatron:bodies:"
# XREAD BLOCK timeout; an idle replicator checks at this pace that Redis lost no changes.
READ_BLOCK_MS = 1000
READ_COUNT = 200
RETRY_SECONDS = 0.5


class Mirror:
    """The registry's mirror of the store at ``shown_url`` for the front end ``frontend``, and
    the PONGs waiting for it.

    ``on_failure(error)`` is told of each failed read, ``on_progress()`` of each step forward
    (the back-pressure may end).
    """

    def __init__(
        self,
        registry: RemoteRegistry,
        frontend: str,
        shown_url: str,
        clock: Callable[[], float],
        on_failure: Callable[[BaseException], None],
        on_progress: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.frontend = frontend.encode()
        self.shown_url = shown_url
        self.clock = clock
        self.applied = 0  # the number of the last change applied
        self.acked = 0  # the change number of the last batch Redis acknowledged
        self.last_id = b"0-0"  # the stream id of the last change applied
        self.epoch: bytes | None = None  # the epoch of the data the mirror was loaded from
        self._registered: bytes | None = None  # the epoch the driver last registered in
        self.must_reload = False
        self._expected: deque[tuple[int, int, int]] = deque()  # (change number, mark, batch)
        # batch number -> its runs by index, and its size; the sizes' sum is held_bytes
        self._sent: dict[int, tuple[dict[int, Sequence[str]], int]] = {}
        self.held_bytes = 0
        self._on_failure = on_failure
        self._on_progress = on_progress
        # Told when the mirror cannot go on until the driver registers again (the driver does
        # so at once): Redis's data is of another epoch than the driver registered in, or
        # another front end's run has no body (none was written: this front end is not among
        # the registered ones, its lease lapsed or Redis restarted).
        self.on_unregistered: Callable[[], None] = lambda: None

    @property
    def lag(self) -> int:
        """Changes Redis acknowledged to this front end that the mirror has not applied."""
        return self.acked - self.applied

    def sent(self, batch: Batch) -> None:
        """``batch`` is on its way to Redis: its runs are mirrored from it, not read back (they
        count in :attr:`held_bytes` until then)."""
        if batch.runs and batch.number not in self._sent:
            self._sent[batch.number] = batch.runs, batch.size
            self.held_bytes += batch.size

    def registered(self, epoch: bytes) -> None:
        """The driver registered with Redis, whose data is of ``epoch``. If the mirror was
        loaded from another (Redis restarted without its data), the change numbers it reached
        mean nothing there: it loads anew, and confirms nothing until then."""
        self._registered = epoch
        if self._stale:
            self._reloading("Redis lost its data, or some (it restarted)")
            self.must_reload = True
        else:
            self._confirm()  # the mirror was loaded from this epoch already

    @property
    def _stale(self) -> bool:
        registered = self._registered
        return self.epoch is not None and registered is not None and registered != self.epoch

    def expect(self, changeno: int, batch: Batch) -> None:
        """Redis acknowledged ``batch`` when at change ``changeno``."""
        self.acked = max(self.acked, changeno)
        self._expected.append((changeno, batch.mark, batch.number))
        self._confirm()

    def _confirm(self) -> None:
        expected = self._expected
        while expected and expected[0][0] <= self.applied and not self._stale:
            self._committed(*expected.popleft())
        self._on_progress()

    def _committed(self, _changeno: int, mark: int, number: int) -> None:
        held = self._sent.pop(number, None)  # every change of the batch is in the mirror now
        if held is not None:
            self.held_bytes -= held[1]
        self.registry.committed(mark)

    async def reload(self, scripts: Scripts) -> None:
        """Load the mirror anew from one snapshot. The PONGs of the batches acknowledged
        before it was asked for are answered (Redis had them before it ran the snapshot, or
        lost them if it went back); those acknowledged while it was on its way wait for the
        changes past it, as any other."""
        expected = self._expected
        before = expected[-1][2] if expected else None  # the last batch acknowledged so far
        result = await scripts.snapshot()
        floor = self.registry.last_seq
        mirror, self.applied, self.last_id, self.epoch = load_snapshot(result, self.clock())
        mirror.restore_last_seq(floor)  # a tail's cursor never goes back
        self.registry.replace_mirror(mirror)
        self.must_reload = False
        if self._stale:  # the data Redis has now, not that the driver registered with: the
            self.on_unregistered()  # driver registers again (not a snapshot per change till then)
        while expected and before is not None and expected[0][2] <= before and not self._stale:
            self._committed(*expected.popleft())
        self.acked = max([self.applied, *(changeno for changeno, _, _ in expected)])
        self._confirm()

    async def run(self, client: Client[bytes], scripts: Scripts) -> None:
        """Follow the change stream until cancelled, reloading when it must."""
        check = False
        while True:
            try:
                if self.must_reload:
                    await self.reload(scripts)
                elif check and int(await client.get("logatron:changeno") or 0) < self.applied:
                    self._reloading("it went back: it restarted without its last changes")
                    await self.reload(scripts)
                check = False
                if not await self.step(client):
                    check = True  # idle: make sure Redis did not go back meanwhile
            except FAILURES as error:
                self._on_failure(error)
                await anyio.sleep(RETRY_SECONDS)
                check = True

    async def step(self, client: Client[bytes], block_ms: int | None = READ_BLOCK_MS) -> bool:
        """Read the next changes (waiting up to ``block_ms`` for one; None: not at all) and
        apply them; False when there was none. Raises what Redis's failures raise."""
        reply = await client.xread({CHANGES: self.last_id}, count=READ_COUNT, block=block_ms)
        if not reply:
            return False
        entries = reply[CHANGES]
        self._apply(entries, await self._runs(client, entries))
        return True

    async def _runs(
        self, client: Client[bytes], entries: tuple[StreamEntry, ...]
    ) -> dict[bytes, Sequence[str] | bytes]:
        """The messages of the runs among ``entries``, by the id of their change: this front
        end's own from the batches it sent, the others' read from their front end's bodies.
        A run found in neither (its body is gone, or none was written) is left out: applying
        it fails, and the mirror is reloaded."""
        runs: dict[bytes, Sequence[str] | bytes] = {}
        wanted: dict[bytes, list[tuple[bytes, bytes]]] = {}  # front end -> (body, change) ids
        for entry in entries:
            fields: Mapping[Any, Any] = entry.field_values
            if fields.get(b"k") != b"l":
                continue
            own = self._own_run(fields)
            if own is not None:
                runs[_identifier(entry)] = own
            elif b"b" in fields:
                wanted.setdefault(fields.get(b"o", b""), []).append(
                    (fields[b"b"], _identifier(entry))
                )
        for origin, ids in wanted.items():  # a front end's bodies are in the order of its runs
            bodies: dict[bytes, bytes] = {}
            for body in await client.xrange(BODIES + origin, ids[0][0], ids[-1][0]):
                values: Mapping[Any, Any] = body.field_values
                bodies[_identifier(body)] = values[b"m"]
            for body_id, change_id in ids:
                if body_id in bodies:
                    runs[change_id] = bodies[body_id]
        return runs

    def _own_run(self, fields: Mapping[Any, Any]) -> Sequence[str] | None:
        try:
            origin, batch, index = run_place(fields)
        except (KeyError, ValueError):
            return None
        held = self._sent.get(batch) if origin == self.frontend else None
        return None if held is None else held[0].get(index)

    def _apply(
        self, entries: tuple[StreamEntry, ...], runs: dict[bytes, Sequence[str] | bytes]
    ) -> None:
        registry = self.registry
        for entry in entries:
            fields: Mapping[Any, Any] = entry.field_values
            number = int(fields[b"i"])
            if number != self.applied + 1:
                self._reloading(f"change {number} follows change {self.applied}")
                self.must_reload = True
                break
            identifier = _identifier(entry)
            try:
                messages = runs.get(identifier)
                if fields[b"k"] == b"l" and messages is None and b"b" not in fields:
                    if fields.get(b"o") != self.frontend:
                        self.on_unregistered()  # its front end thought it alone
                apply_change(registry, fields, messages)
            except (LogatronError, KeyError, ValueError, IndexError) as error:
                self._reloading(f"change {number} does not apply ({error!r})")
                self.must_reload = True
                break
            self.applied = number
            self.last_id = identifier
        self._confirm()

    def _reloading(self, why: str) -> None:
        logger.warning(
            "reloading the mirror of the store at %s: %s",
            self.shown_url,
            why,
            extra={"event": "store-reload", "store": self.shown_url, "reason": why},
        )


def _identifier(entry: StreamEntry) -> bytes:
    identifier = entry.identifier
    return identifier if isinstance(identifier, bytes) else identifier.encode()
