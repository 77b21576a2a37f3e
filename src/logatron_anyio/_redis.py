"""``--store redis://…``: several front ends sharing one store in Redis (or Valkey), on coredis.

A front end's :class:`~logatron_core.RemoteRegistry` queues its sessions' changes as commands;
:class:`RedisStore` drives it with three tasks:

- the **driver** takes the queued commands a few milliseconds after the first one arrives (at
  once when a ``PING`` waits), and sends them as one call of the BATCH script (``_redis_scripts``)
  that applies them in order, atomically: one call per batch, never one per line. Batches go
  on one connection of their own, up to ``PIPELINE_DEPTH`` in flight, so Redis applies them in
  the order the front end queued them while the next ones are on their way. The refusals it
  returns are answered by the sessions that asked (``ERR``, closing for a claim);
- the **replicator** (``_redis_mirror``) applies the change stream every front end writes to
  the local mirror that serves every read, and answers the held ``PONG``s: a ``PONG`` means
  Redis acknowledged the lines before the ``PING`` and this front end's mirror has them;
- the **janitor** (every front end runs one) releases the names of front ends whose lease
  expired and forgets the clients retained past the retention.

Leases: each batch refreshes the front end's lease (a heartbeat batch is sent when idle). A
front end killed without a word has its names released once its lease expires (by the
janitors, or at once by a claim of one of its names). A front end that finds its own lease
expired (it was cut off from Redis, or Redis restarted empty) registers again, claiming its
connected names anew, before sending anything else.

When Redis is unreachable: clients stay connected, ``PONG``s are held, batches are kept and
sent again (each batch has a number, so one whose reply was lost is not applied twice), up to
``MAX_BUFFERED_BYTES``, past which the TCP server stops reading its clients (back-pressure
through ``wait_writable``). ``/healthz`` answers 503 with ``"store": "unavailable"``, the
server's log says so once, and the front end recovers by itself when Redis is back.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from logatron_core import ErrorCode, RemoteRegistry

from ._durable import StoreHealth
from ._redis_client import FAILURES, Client, NoScriptError, Pipe, Scripts, open_client, tls_context
from ._redis_codec import (
    DEFAULT_LEASE_SECONDS,
    Batch,
    Encoder,
    StoreUnavailable,
    StoreUrlError,
    limits_args,
    redact,
    refusals,
)
from ._redis_mirror import Mirror
from ._redis_scripts import BATCH, BATCH_WINDOW

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "MAX_BUFFERED_BYTES",
    "RedisStore",
    "StoreUnavailable",
    "StoreUrlError",
]

logger = logging.getLogger("logatron.store")

# Commands a front end holds while Redis is slow or unreachable, in bytes of lines, and runs it
# holds until its mirror has them (each bounded alone); past it the TCP server stops reading its
# clients until Redis (or the mirror) has taken some. 32 MiB is half a million 64-byte lines:
# seconds of a busy front end's input, and far below its memory.
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# One batch (one script call) carries at most this much: Redis runs a script alone, and a
# few milliseconds of it at a time keeps the other front ends' batches and reads flowing.
MAX_BATCH_BYTES = 2 * 1024 * 1024
# Batches sent before the reply to the first: Redis runs one while the next is on its way.
PIPELINE_DEPTH = 3
assert PIPELINE_DEPTH <= BATCH_WINDOW  # a batch sent again finds its result in Redis
# Changes Redis acknowledged that the mirror may lag behind before reading pauses too.
MAX_MIRROR_LAG = 2_000
# How long the driver waits after a first command for more, unless a PING waits.
BATCH_DELAY_SECONDS = 0.002
# Retries after a failure: from the first delay, doubled up to the last.
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 1.0
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 2.0  # to send what is queued when the front end stops

_LIMIT_NAMES = ("buffer_size", "max_clients", "max_state_keys", "retention_seconds",
                "max_retained")  # fmt: skip


class RedisStore:
    """The shared store of ``registry`` (a RemoteRegistry) in Redis at ``url``, and the TCP
    server's ``store_driver``. Run it with :meth:`running` (or ``run`` in a task group, then
    ``stop``).

    Raises StoreUrlError for a URL that names no Redis (or TLS files it cannot use),
    ValueError for a lease not above 0.
    """

    def __init__(
        self,
        url: str,
        registry: RemoteRegistry,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tls = tls_context(url)
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be above 0, not {lease_seconds}")
        self.url = url
        self.shown_url = redact(url)
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.frontend = secrets.token_hex(6)
        self.health = StoreHealth(failed_state="unavailable")
        self._encoder = Encoder(self.frontend)
        self.mirror = Mirror(
            registry, self.frontend, self.shown_url, clock, self._failed, self._unblock
        )
        self.mirror.on_unregistered = self._register_soon
        self._limits = limits_args(registry)
        self._pending: deque[Batch] = deque()  # taken, not yet acknowledged, oldest first
        self._buffered = 0  # bytes in _pending
        self._batches = 0
        self._taken_mark = 0  # the registry's mark when commands were last all taken
        self._must_register = False
        self._stopping = False
        self._scope: anyio.CancelScope | None = None
        self._wakeup: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._drained: anyio.Event | None = None
        self._client: Client[bytes] | None = None
        self._scripts: Scripts | None = None
        self._pipe: Pipe | None = None
        registry.on_queued = self.pong_held

    # -- the TCP server's store driver --------------------------------------------------------

    def pong_held(self) -> None:
        """Commands wait (or a ``PONG`` does): send them soon."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def wait_writable(self) -> None:
        """Return at once unless too much waits for Redis or for the mirror. Takes the
        commands queued so far, so that all of them count."""
        self._take(heartbeat=False)
        while self._blocked():
            if self._writable is None or self._writable.is_set():
                self._writable = anyio.Event()
            await self._writable.wait()

    def _blocked(self) -> bool:
        mirror = self.mirror
        held = max(self._buffered, mirror.held_bytes)
        return held > MAX_BUFFERED_BYTES or mirror.lag > MAX_MIRROR_LAG

    def _unblock(self) -> None:
        if self._writable is not None and not self._blocked():
            self._writable.set()

    # -- running -------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RedisStore]:
        """Run until the block ends, then send what is queued and stop. Raises
        StoreUnavailable (in an exception group) when Redis cannot be used."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.stop()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, register, load the mirror, report started, then drive the store until
        :meth:`stop` (outside cancellation does not end it: the last batch is sent after the
        servers have closed their connections). Raises StoreUnavailable at start."""
        self._wakeup, self._writable, self._drained = anyio.Event(), anyio.Event(), anyio.Event()
        with anyio.CancelScope(shield=True) as scope:
            self._scope = scope
            async with (
                open_client(self.url, ssl_context=self._tls) as client,
                open_client(self.url, max_connections=1, ssl_context=self._tls) as batches,
            ):
                self._client, self._scripts = client, Scripts(client)
                self._pipe = Pipe(batches, BATCH)
                await self._start()
                task_status.started()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._drive)
                    tg.start_soon(self.mirror.run, client, self._scripts)
                    tg.start_soon(self._janitor)

    async def _start(self) -> None:
        assert self._scripts is not None
        try:
            with anyio.fail_after(START_TIMEOUT_SECONDS):
                await self._register()
                await self.mirror.reload(self._scripts)
        except FAILURES as error:
            said = _says(error)
            raise StoreUnavailable(f"cannot use the store at {self.shown_url}: {said}") from None
        logger.info(
            "front end %s on the store at %s (lease %g s, at seq %d)",
            self.frontend,
            self.shown_url,
            self.lease_seconds,
            self.registry.last_seq,
            extra={"event": "store-ready", "store": self.shown_url, "frontend": self.frontend},
        )

    async def stop(self) -> None:
        """Send what is queued (for at most STOP_TIMEOUT_SECONDS), give the lease up, end
        ``run``. Does nothing before ``run`` has started."""
        if self._scope is None:
            return
        with anyio.move_on_after(STOP_TIMEOUT_SECONDS):
            self._stopping = True
            self.pong_held()
            if self._drained is not None:
                await self._drained.wait()
            if self._client is not None:
                await self._client.delete([f"logatron:frontend:{self.frontend}"])
        self._scope.cancel()

    # -- the driver ----------------------------------------------------------------------------

    async def _drive(self) -> None:
        delay = RETRY_FIRST_SECONDS
        heartbeat = self.lease_seconds / 3
        registry = self.registry
        while True:
            if self.health.failing:
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            elif not self._pending and not self._stopping:
                assert self._wakeup is not None
                with anyio.move_on_after(heartbeat):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
                if not registry.pongs_waiting:
                    await anyio.sleep(BATCH_DELAY_SECONDS)  # more lines come with the first
            self._take()
            try:
                if self._must_register:
                    await self._register()
                await self._send_pending()
            except (*FAILURES, StoreUnavailable) as error:
                self._failed(error)
                continue
            delay = RETRY_FIRST_SECONDS
            if self._stopping and self._drained is not None:
                self._drained.set()
                await anyio.sleep_forever()

    def _register_soon(self) -> None:
        """The mirror cannot go on until this front end registers again: do it now."""
        self._must_register = True
        self.pong_held()

    def _take(self, *, heartbeat: bool = True) -> None:
        """Move the queued commands into the last batch not sent yet, or new ones (with
        ``heartbeat``, an empty one when nothing waits: it refreshes the lease)."""
        mark, commands = self.registry.take()
        pending = self._pending
        if not commands:
            if heartbeat and not pending:
                self._batches += 1
                pending.append(Batch(self._batches, mark))
            return
        left: list[Any] = commands
        while left:
            if pending and not pending[-1].sent and pending[-1].size < MAX_BATCH_BYTES:
                batch = pending[-1]
            else:
                self._batches += 1
                # A batch that does not hold the last commands taken confirms only the earlier.
                batch = Batch(self._batches, self._taken_mark)
                pending.append(batch)
            before = batch.size
            left = self._encoder.encode(batch, left, MAX_BATCH_BYTES)
            self._buffered += batch.size - before
        batch.mark = self._taken_mark = mark

    async def _send_pending(self) -> None:
        """Send the pending batches (up to PIPELINE_DEPTH in flight) until none is left, and
        take their replies in order. Raises what Redis's failures raise."""
        assert self._pipe is not None
        pending, pipe = self._pending, self._pipe
        in_flight: deque[Any] = deque()
        while pending:
            while len(in_flight) < min(PIPELINE_DEPTH, len(pending)):
                batch = pending[len(in_flight)]
                batch.sent = True  # never changed from now on: Redis may apply it already
                batch.sent_at = time.perf_counter()
                self.mirror.sent(batch)
                args = [self.frontend, str(batch.number), self._lease_ms, *self._limits]
                in_flight.append(await pipe.send([*args, *batch.args]))
            try:
                result = await in_flight.popleft()
            except NoScriptError:  # Redis restarted: the calls after this one failed too
                await _drain(in_flight)
                await pipe.load()
                continue
            if result[0] in (b"lease", b"gap"):  # so are the calls after it: none was applied
                await _drain(in_flight)
                lease = result[0] == b"lease"
                logger.warning(
                    "front end %s found %s: registering again",
                    self.frontend,
                    "its lease expired" if lease else "a batch went missing",
                    extra={
                        "event": "store-lease-lost" if lease else "store-batch-gap",
                        "frontend": self.frontend,
                    },
                )
                await self._register()
                continue
            self._acknowledged(pending.popleft(), result)
            self._take(heartbeat=False)  # what came meanwhile goes out with the next ones

    def _acknowledged(self, batch: Batch, result: list[Any]) -> None:
        """Redis applied ``batch``: tell the refusals, expect its changes in the mirror."""
        self._recovered()
        refused = refusals(result)
        self._encoder.accepted(batch, set(refused))
        now = self.clock()
        for index, (code, detail) in refused.items():
            self.registry.refused(batch.commands[index][0], ErrorCode(code), detail, now)
        self._buffered -= batch.size
        self.mirror.expect(int(result[1]), batch)
        health = self.health
        elapsed = time.perf_counter() - batch.sent_at
        health.flushes += 1
        health.rows_written += len(batch.commands)
        health.flush_seconds += elapsed
        health.last_flush_seconds = elapsed

    async def _register(self) -> None:
        """HELLO: the lease, the limits, the seq floor, and the names held, claimed again.
        Raises StoreUnavailable when live front ends have other limits."""
        assert self._scripts is not None
        self._must_register = False  # a request made while HELLO runs is not lost
        claims = list(self._encoder.held.items())
        args = [
            self.frontend,
            self._lease_ms,
            *self._limits,
            str(self.registry.last_seq),
            str(self._pending[0].number - 1 if self._pending else self._batches),
            *self._encoder.claims_args(),
        ]
        result = await self._scripts.hello(args)
        if result[0] == b"config":
            stored = ", ".join(
                f"{name}={value.decode()}"
                for name, value in zip(_LIMIT_NAMES, result[1:], strict=True)
            )
            raise StoreUnavailable(
                f"the store at {self.shown_url} is used by live front ends with other limits "
                f"({stored}): give every front end the same limits"
            )
        self.mirror.registered(result[2])
        now = self.clock()
        for index, (code, detail) in refusals(result, 3).items():
            connection, claim = claims[index]
            self._encoder.forget(connection, claim.session)
            self.registry.refused(claim, ErrorCode(code), detail, now)

    @property
    def _lease_ms(self) -> str:
        return str(max(1, round(self.lease_seconds * 1000)))

    # -- the janitor ---------------------------------------------------------------------------

    async def _janitor(self) -> None:
        assert self._scripts is not None
        registry = self.registry
        limits = [repr(float(registry.retention_seconds)), str(registry.max_retained)]
        while True:
            delay = self.lease_seconds / 5
            deadline = registry.next_deadline()
            if deadline is not None:
                delay = min(delay, deadline - self.clock())
            await anyio.sleep(max(delay, 0.05))
            try:
                await self._scripts.janitor([repr(self.clock()), *limits])
            except FAILURES:
                pass  # the driver and the replicator report Redis's failures

    # -- health --------------------------------------------------------------------------------

    def _failed(self, error: BaseException) -> None:
        said = str(error) if isinstance(error, StoreUnavailable) else _says(error)
        health = self.health
        health.failed_flushes += 1
        health.last_error = said
        self._must_register = True
        if health.failing:
            return
        health.failing = True
        logger.error(
            "cannot reach the store at %s (PONGs are held, up to %g MiB buffered, then reading "
            "pauses; retrying): %s",
            self.shown_url,
            MAX_BUFFERED_BYTES / (1024 * 1024),
            said,
            extra={"event": "store-failing", "store": self.shown_url, "error": said},
        )

    def _recovered(self) -> None:
        if not self.health.failing:
            return
        self.health.failing = False
        logger.warning(
            "the store at %s is reachable again",
            self.shown_url,
            extra={"event": "store-recovered", "store": self.shown_url},
        )


async def _drain(in_flight: deque[Any]) -> None:
    """Wait for the replies still due (their batches are sent again), whatever they are."""
    while in_flight:
        try:
            await in_flight.popleft()
        except FAILURES:
            pass


def _says(error: BaseException) -> str:
    """One line for an error of coredis (with its cause, where it says more)."""
    text = str(error) or type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text
