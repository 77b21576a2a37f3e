"""``--data-dir``: the registry's memory store kept on disk, so a restart loses nothing confirmed.

:meth:`DurableStore.open` reads the data directory back into a new registry (``rebuild``), then
:meth:`DurableStore.run` writes the journal's batches (``logatron_core.Journal``) to SQLite in
a worker thread, one transaction each, one at a time: every ``flush_interval`` seconds, and at
once when a ``PING`` waits for its ``PONG`` (pings that arrive together share one write). A
batch written confirms the registry's held ``PONG``s; a batch that fails (a full disk) is kept
for the next write, ``PONG``s stay held, the failure is logged, counted and shown by
``/healthz``, and the TCP server stops reading from its clients (back-pressure) until a write
succeeds again, which it retries every ``flush_interval``.

Seqs are seen before they are written (a tail, ``/api/recent``), so a crash could hand the
unwritten ones out again to other lines, and a reader resuming from one would skip those.
So the file also holds a reservation, ``SEQ_RESERVE`` seqs above the newest written: seqs
continue above it after a crash (the seqs skipped count as no line missed), a write is made
as soon as half of it is used, and a clean close records the exact high-water mark.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from logatron_core import Journal, MemoryStore, Registry, rebuild

from ._sqlite import DataDirError, SqliteFile

__all__ = ["DEFAULT_FLUSH_INTERVAL", "DataDirError", "DurableStore", "StoreHealth"]

logger = logging.getLogger("logatron.store")

# Seconds between writes when no PING asks for one (issue 8's default). Lines confirmed by a
# PONG are written before it; this bounds what a crash loses of the lines not yet confirmed.
DEFAULT_FLUSH_INTERVAL = 1.0

# Seqs that may be handed out above the newest written before they are (see the module
# comment): a write is made once half of them are used.
SEQ_RESERVE = 1 << 20


@dataclass(slots=True)
class StoreHealth:
    """A store's figures, for ``/healthz`` and ``/metrics`` (``--data-dir``: writes to disk;
    ``--store redis://``: batches sent to Redis). ``failed_state`` is what ``/healthz`` says
    of the store while ``failing``."""

    failing: bool = False
    failed_state: str = "failing"
    last_error: str = ""
    flushes: int = 0
    failed_flushes: int = 0
    rows_written: int = 0
    flush_seconds: float = 0.0  # total time spent writing
    last_flush_seconds: float = 0.0


class DurableStore:
    """A registry whose memory store is journaled to ``directory``; made by :meth:`open`."""

    def __init__(
        self,
        registry: Registry,
        journal: Journal,
        file: SqliteFile,
        flush_interval: float,
    ) -> None:
        self.registry = registry
        self.health = StoreHealth()
        self._journal = journal
        self._file = file
        self._flush_interval = flush_interval
        self._wanted: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._reserved = registry.last_seq
        journal.on_write_wanted = self.pong_held

    def _reserve_above(self, last_seq: int) -> int:
        """The reservation to write with seqs up to ``last_seq`` (renewed when half used)."""
        if last_seq > self._reserved - SEQ_RESERVE // 2:
            return last_seq + SEQ_RESERVE
        return self._reserved

    def _reserved_to(self, reserved: int) -> None:
        self._reserved = reserved
        self._journal.write_after_seq = reserved - SEQ_RESERVE // 2

    @classmethod
    def open(
        cls,
        directory: Path,
        registry_options: dict[str, int | float],
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        fsync: bool = False,
        max_pages: int | None = None,
        now: float | None = None,
    ) -> DurableStore:
        """Open ``directory`` (created if missing) and rebuild the registry from it.

        ``registry_options`` are Registry's keyword arguments. Raises DataDirError (one line
        for the operator) when the directory cannot be used, ValueError for bad options.
        """
        file = SqliteFile(directory, fsync=fsync, max_pages=max_pages)
        try:
            stored = file.load()
            store = rebuild(
                MemoryStore(), stored.clients, stored.runs, stored.last_seq, now or time.time()
            )
            store.skip_seqs(stored.reserved_seq - store.last_seq)  # shown, maybe, never stored
            registry = Registry(store, **registry_options)  # type: ignore[arg-type]
            journal = Journal(registry, store)
            durable = cls(registry, journal, file, flush_interval)
            reserved = durable._reserve_above(store.last_seq)
            file.reserve(reserved)
            durable._reserved_to(reserved)
        except (sqlite3.Error, OSError) as error:
            file.close()
            raise DataDirError(f"cannot write to data dir {directory}: {error}") from None
        except BaseException:
            file.close()
            raise
        return durable

    @property
    def directory(self) -> Path:
        return self._file.directory

    def set_max_pages(self, max_pages: int) -> None:
        """Change the database's size cap (tests: a disk that fills up, then frees space)."""
        self._file.set_max_pages(max_pages)

    def pong_held(self) -> None:
        """A session holds a ``PONG``: write soon."""
        if self._wanted is not None:
            self._wanted.set()

    async def wait_writable(self) -> None:
        """Return at once unless writes are failing; then once one has succeeded again."""
        while self.health.failing and self._writable is not None:
            await self._writable.wait()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write batches until cancelled. The owner writes the last batch once the servers
        have stopped (``flush()``), then calls ``close()``."""
        self._wanted = anyio.Event()
        self._writable = anyio.Event()
        task_status.started()
        while True:
            with anyio.move_on_after(self._flush_interval):
                await self._wanted.wait()
            self._wanted = anyio.Event()
            if not await self.flush():
                # Retried on the interval, not on every PING.
                await anyio.sleep(self._flush_interval)

    def close(self) -> None:
        """Close the database and release the directory (after the last ``flush()``); when
        everything is written, seqs continue right above the newest after a restart."""
        try:
            if not self._journal.dirty and not self.health.failing:
                self._file.reserve(self.registry.last_seq)
        except (sqlite3.Error, OSError):
            pass  # the reservation stays: seqs skip it after the restart
        finally:
            self._file.close()

    async def flush(self) -> bool:
        """Write what changed since the last batch; True unless the write failed."""
        batch = self._journal.take()
        if batch is None:
            return True
        started = time.perf_counter()
        reserved = self._reserve_above(batch.last_seq)
        try:
            rows = await anyio.to_thread.run_sync(
                self._file.write, batch, reserved, limiter=self._limiter
            )
        except (sqlite3.Error, OSError) as error:
            self._journal.failed(batch)
            self._failed(error)
            return False
        elapsed = time.perf_counter() - started
        health = self.health
        health.flushes += 1
        health.rows_written += rows
        health.flush_seconds += elapsed
        health.last_flush_seconds = elapsed
        self._journal.written(batch)
        self._reserved_to(reserved)
        if health.failing:
            health.failing = False
            logger.warning(
                "writing to %s works again",
                self.directory,
                extra={"event": "store-recovered", "directory": str(self.directory)},
            )
            if self._writable is not None:
                self._writable.set()
                self._writable = anyio.Event()
        return True

    def _failed(self, error: BaseException) -> None:
        health = self.health
        health.failed_flushes += 1
        health.last_error = str(error) or type(error).__name__
        if not health.failing:
            health.failing = True
            logger.error(
                "cannot write to %s (PONGs are held, reading paused, retrying every %g s): %s",
                self.directory,
                self._flush_interval,
                health.last_error,
                extra={
                    "event": "store-failing",
                    "directory": str(self.directory),
                    "error": health.last_error,
                },
            )
