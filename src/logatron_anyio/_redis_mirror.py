"""The replicator: keeps a front end's mirror in step with the change stream in Redis.

It reads ``logatron:changes`` with ``XREAD BLOCK`` from the last id it applied and applies each
change to the registry's mirror (``RemoteRegistry.apply_*``, which emit the events tails
follow); a run's messages stay the bytes they came in (``logatron_core.decode_run``), parsed
only if something reads them. Every change carries its number: one that does not follow the
last applied (the front end fell more than ``CHANGES_MAXLEN`` behind, or Redis restarted and
lost changes) makes it load the whole mirror anew from one atomic snapshot, as at start. An
idle replicator checks once per ``READ_BLOCK_MS`` that Redis did not go back.

It also answers the ``PONG``s: the driver tells it the change number Redis had reached when
it acknowledged each batch (:meth:`Mirror.expect`), and the PINGs after that batch are
answered once the mirror has applied that far, so a client reads its own lines back from the
front end that answered its ``PONG``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import anyio

from logatron_core import LogatronError, RemoteRegistry

from ._redis_client import FAILURES, Client, Scripts, StreamEntry
from ._redis_codec import apply_change, load_snapshot

__all__ = ["READ_BLOCK_MS", "Mirror"]

logger = logging.getLogger("logatron.store")

CHANGES = b"logatron:changes"
# XREAD BLOCK timeout; an idle replicator checks at this pace that Redis lost no changes.
READ_BLOCK_MS = 1000
READ_COUNT = 200
RETRY_SECONDS = 0.5


class Mirror:
    """The registry's mirror of the store at ``shown_url``, and the PONGs waiting for it.

    ``on_failure(error)`` is told of each failed read, ``on_progress()`` of each step forward
    (the back-pressure may end).
    """

    def __init__(
        self,
        registry: RemoteRegistry,
        shown_url: str,
        clock: Callable[[], float],
        on_failure: Callable[[BaseException], None],
        on_progress: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.shown_url = shown_url
        self.clock = clock
        self.applied = 0  # the number of the last change applied
        self.acked = 0  # the change number of the last batch Redis acknowledged
        self.last_id = b"0-0"  # the stream id of the last change applied
        self.must_reload = False
        self._expected: deque[tuple[int, int]] = deque()  # (change number, mark)
        self._on_failure = on_failure
        self._on_progress = on_progress

    @property
    def lag(self) -> int:
        """Changes Redis acknowledged to this front end that the mirror has not applied."""
        return self.acked - self.applied

    def expect(self, changeno: int, mark: int) -> None:
        """Redis acknowledged the batch ending at ``mark`` when at change ``changeno``."""
        self.acked = max(self.acked, changeno)
        self._expected.append((changeno, mark))
        self._confirm()

    def _confirm(self) -> None:
        expected = self._expected
        while expected and expected[0][0] <= self.applied:
            self.registry.committed(expected.popleft()[1])
        self._on_progress()

    async def reload(self, scripts: Scripts) -> None:
        """Load the mirror anew from one snapshot; every PONG held is answered."""
        result = await scripts.snapshot()
        floor = self.registry.last_seq
        mirror, self.applied, self.last_id = load_snapshot(result, self.clock())
        mirror.restore_last_seq(floor)  # a tail's cursor never goes back
        self.registry.replace_mirror(mirror)
        self.acked = self.applied
        self.must_reload = False
        while self._expected:
            self.registry.committed(self._expected.popleft()[1])
        self._on_progress()

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
                reply = await client.xread(
                    {CHANGES: self.last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except FAILURES as error:
                self._on_failure(error)
                await anyio.sleep(RETRY_SECONDS)
                check = True
                continue
            if reply:
                self._apply(reply[CHANGES])
            else:
                check = True  # idle: make sure Redis did not go back meanwhile

    def _apply(self, entries: tuple[StreamEntry, ...]) -> None:
        registry = self.registry
        for entry in entries:
            fields = entry.field_values
            number = int(fields[b"i"])
            if number != self.applied + 1:
                self._reloading(f"change {number} follows change {self.applied}")
                self.must_reload = True
                break
            try:
                apply_change(registry, fields)
            except (LogatronError, KeyError, ValueError, IndexError) as error:
                self._reloading(f"change {number} does not apply ({error!r})")
                self.must_reload = True
                break
            self.applied = number
            identifier = entry.identifier
            self.last_id = identifier if isinstance(identifier, bytes) else identifier.encode()
        self._confirm()

    def _reloading(self, why: str) -> None:
        logger.warning(
            "reloading the mirror of the store at %s: %s",
            self.shown_url,
            why,
            extra={"event": "store-reload", "store": self.shown_url, "reason": why},
        )
