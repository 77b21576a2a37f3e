"""The replicator (``_redis_mirror.Mirror``) and the driver together: when a PONG may be
answered while the mirror reloads or after Redis lost its data, and how long the bodies of the
front ends' runs stay in Redis.

Each test drives the scripts and the Mirror as the driver does (``Mirror.sent`` before the
call, ``Mirror.expect`` with the change number of the reply; never ``registry.committed``
directly), with the driver's interleavings made deterministic.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from logatron_anyio._redis_client import Scripts, open_client
from logatron_anyio._redis_codec import Batch, limits_args
from logatron_core import Session
from redis_server import RedisServer, emptied, module_redis, own_server
from test_http import until
from test_redis import TIMEOUT, front_end, get_body, peer
from test_redis_model import RedisFront, one_front

redis = pytest.fixture(scope="module")(module_redis)
store_url = pytest.fixture(emptied)
own_redis = pytest.fixture(own_server)


async def drive(front: RedisFront) -> None:
    """One batch as the driver sends it: the PONGs are the mirror's to answer."""
    await front.sync(confirm_at_once=False)


def messages(front: RedisFront, name: str) -> list[str]:
    return [entry.message for entry in front.registry.log(name)]


class SnapshotThenBatch:
    """Scripts whose SNAPSHOT reply reaches the mirror only after the driver had the reply
    of a batch that Redis ran after the snapshot (two connections: the order in which their
    replies are read is the event loop's; a large snapshot makes it the usual one)."""

    def __init__(self, scripts: Scripts, front: RedisFront) -> None:
        self.scripts = scripts
        self.front = front

    async def snapshot(self) -> Any:
        result = await self.scripts.snapshot()
        await drive(self.front)
        return result


async def reload_while_a_batch_is_acknowledged(url: str, check_pong: bool) -> None:
    async with open_client(url) as client:
        a = await one_front(client)
        scripts = a.scripts
        session = Session(a.registry)
        session.receive_data(b"IAM x\nPING\n", 1.0)
        await drive(a)
        assert await a.mirror() == 0
        assert session.data_to_send() == b"PONG\n"
        session.receive_data(b"LOG late\nPING\n", 2.0)
        # The mirror reloads (a gap, a lost body, Redis went back...) while the driver sends.
        await a.replicator.reload(SnapshotThenBatch(scripts, a))  # type: ignore[arg-type]
        pong = session.data_to_send()
        # A PONG means: this front end's mirror has the lines before the PING.
        if check_pong:
            assert pong == b"" or messages(a, "x") == ["late"], (pong, messages(a, "x"))
            assert a.replicator.lag > 0  # Redis is ahead of the mirror: it is not "caught up"
        # And its own run is still its own: no second reload to read it.
        assert await a.mirror() == 0
        assert messages(a, "x") == ["late"]
        assert session.data_to_send() + pong == b"PONG\n"


def test_a_batch_acknowledged_during_a_reload_is_not_confirmed_before_the_mirror_has_it(
    redis: RedisServer,
) -> None:
    anyio.run(reload_while_a_batch_is_acknowledged, redis.url(), True)


def test_a_lone_front_end_reads_its_own_run_acknowledged_during_a_reload_without_reloading(
    redis: RedisServer,
) -> None:
    """The batch's runs were dropped from Mirror._sent by the reload: a lone front end wrote
    no body for them, so its mirror cannot apply its own change and loads everything again."""
    anyio.run(reload_while_a_batch_is_acknowledged, redis.url(), False)


@pytest.mark.anyio
async def test_a_pong_during_a_reload_is_answered_only_once_the_mirror_has_the_lines(
    store_url: str,
) -> None:
    """The same race through a running front end: its replicator reloads (as after a gap or
    a lost body) and the SNAPSHOT reply is read after the driver had the reply of the batch
    holding ``LOG late`` and the ``PING`` after it (Redis ran the batch after the snapshot)."""
    async with front_end(store_url) as a, peer(a.tcp_port, b"IAM x\nPING\n") as x:
        assert await x.line() == b"PONG\n"
        store = a.store
        scripts = store._scripts
        assert scripts is not None
        real = scripts.snapshot
        taken, checked = anyio.Event(), anyio.Event()
        calls = 0

        async def snapshot() -> Any:
            nonlocal calls
            calls += 1
            result = await real()
            if calls == 1:
                taken.set()
                await until(lambda: store.mirror.acked > int(result[0]))  # the batch's reply
            else:  # a second reload (its own run not found) waits until the test has looked
                with anyio.move_on_after(TIMEOUT):
                    await checked.wait()
            return result

        scripts.snapshot = snapshot  # type: ignore[method-assign]
        store.mirror.must_reload = True  # as after a gap, a lost body, Redis going back
        with anyio.fail_after(TIMEOUT):
            await taken.wait()
        await x.send(b"LOG late\nPING\n")
        assert await x.line() == b"PONG\n"
        status, body = await get_body(a.http_port, "/api/clients/x/log")
        checked.set()
        assert status == 200
        assert b"late" in body, body


async def left_alone(url: str) -> None:
    async with open_client(url) as client:
        await client.flushdb()
        scripts = Scripts(client)
        a = RedisFront(client, scripts, "fa", 3)
        b = RedisFront(client, scripts, "fb", 3)
        for front in (a, b):
            await front.hello()
        session = Session(a.registry)
        session.receive_data(b"IAM x\n", 1.0)
        for number in range(5):
            session.receive_data(b"LOG %d\n" % number, 2.0)
            await drive(a)
        assert await client.xlen(b"logatron:bodies:fa") == 5
        # fb stops (RedisStore.stop deletes its lease) and fa's janitor releases it.
        await client.delete([b"logatron:frontend:fb"])
        await scripts.janitor(["3.0", "3600.0", "10"])
        assert await client.smembers(b"logatron:frontends") == {b"fa"}
        session.receive_data(b"LOG alone\n", 4.0)
        await drive(a)
        assert await a.mirror() == 0 and messages(a, "x")[-1] == "alone"
        # No front end reads fa's bodies any more, and fa writes none: they must not stay
        # (up to CHANGES_MAXLEN runs of 64 KiB) for as long as fa lives.
        ttl = await client.ttl(b"logatron:bodies:fa")
        assert ttl != -1, f"bodies:fa kept for good ({await client.xlen(b'logatron:bodies:fa')})"
        # A front end that registers later reads fa's next runs (its bodies written again).
        c = RedisFront(client, scripts, "fc", 3)
        await c.hello()
        await c.replicator.reload(scripts)
        session.receive_data(b"LOG together\n", 5.0)
        await drive(a)
        assert await c.mirror() == 0 and messages(c, "x")[-1] == "together"
        assert await client.ttl(b"logatron:bodies:fa") == -1  # kept while another reads them


def test_the_bodies_of_a_front_end_left_alone_expire(redis: RedisServer) -> None:
    anyio.run(left_alone, redis.url())


@pytest.mark.anyio
async def test_after_redis_restarts_empty_a_pong_still_means_the_mirror_has_the_lines(
    own_redis: RedisServer,
) -> None:
    """The new Redis acknowledges the batch at a change number below the one the mirror had
    reached in the old one: the driver, registering again, finds another epoch, and the PONG
    waits until the mirror has loaded the new Redis's data."""
    async with (
        front_end(own_redis.url(), lease_seconds=1) as a,
        peer(a.tcp_port, b"IAM w\nLOG before\nLOG more\nSET k v\nPING\n") as w,
    ):
        assert await w.line() == b"PONG\n"
        await anyio.to_thread.run_sync(own_redis.kill)
        await anyio.to_thread.run_sync(own_redis.start)
        await w.send(b"LOG after\nPING\n")
        assert await w.line() == b"PONG\n"
        assert [e.message for e in a.registry.log("w")] == ["after"]


@pytest.mark.anyio
async def test_after_redis_restarts_from_an_older_rdb_a_pong_still_means_the_mirror_has_the_lines(
    own_redis: RedisServer,
) -> None:
    """Redis crashes and comes back from its last RDB: same epoch, fewer changes than the
    mirror applied. The batch after it is acknowledged at a change number below the mirror's:
    its PONG must wait until the mirror has loaded Redis's data again."""
    async with (
        front_end(own_redis.url()) as a,
        peer(a.tcp_port, b"IAM w\nLOG before\nPING\n") as w,
    ):
        assert await w.line() == b"PONG\n"
        assert own_redis.command("SAVE") == b"+OK\r\n"
        await w.send(b"".join(b"LOG lost %d\n" % n for n in range(50)) + b"PING\n")
        assert await w.line() == b"PONG\n"
        await anyio.to_thread.run_sync(own_redis.kill)
        await anyio.to_thread.run_sync(own_redis.start)  # loads dump.rdb
        await w.send(b"LOG after\nPING\n")
        assert await w.line() == b"PONG\n"
        messages = [e.message for e in a.registry.log("w")]
        assert messages[-1] == "after", messages[-3:]


@pytest.mark.anyio
async def test_a_mirror_that_finds_a_new_epoch_before_its_driver_does_not_reload_in_a_loop(
    own_redis: RedisServer,
) -> None:
    """Redis restarts empty; front end b registers again at once (its clients write), a (idle,
    a long lease: its heartbeat is seconds away) reloads, finds b's new epoch, not the one its
    driver registered in. Until a's driver registers again, each reload is a snapshot of the
    whole store (a script that holds Redis): a must not take one after each read of b's
    changes."""
    async with (
        front_end(own_redis.url(), lease_seconds=30) as a,
        front_end(own_redis.url(), lease_seconds=30) as b,
        peer(a.tcp_port, b"IAM x\nPING\n") as x,
        peer(b.tcp_port, b"IAM y\nPING\n") as y,
    ):
        assert await x.line() == b"PONG\n"
        assert await y.line() == b"PONG\n"
        scripts = a.store._scripts
        assert scripts is not None
        real = scripts.snapshot
        calls = 0

        async def snapshot() -> Any:
            nonlocal calls
            calls += 1
            return await real()

        scripts.snapshot = snapshot  # type: ignore[method-assign]
        await anyio.to_thread.run_sync(own_redis.kill)
        await anyio.to_thread.run_sync(own_redis.start)
        with anyio.move_on_after(2.0):
            while True:  # b's client writes: b registers again, and its changes flow
                await y.send(b"".join(b"LOG %d\n" % n for n in range(20)) + b"PING\n")
                assert await y.line() == b"PONG\n"
        assert calls <= 5, f"{calls} snapshots in 2 s"
        # And a still answers its client's PING once it has registered again.
        await x.send(b"LOG after\nPING\n")
        assert await x.line() == b"PONG\n"
        assert [e.message for e in a.registry.log("x")] == ["after"]


async def out_of_order(url: str) -> None:
    async with open_client(url) as client:
        a = await one_front(client)
        scripts = a.scripts
        limits = limits_args(a.registry)
        session = Session(a.registry)
        session.receive_data(b"IAM x\nLOG first\n", 1.0)
        _, commands = a.registry.take()
        batches = [Batch(1, 0), Batch(2, 0)]
        assert not a.encoder.encode(batches[0], commands[:1], 2**30)  # the claim
        assert not a.encoder.encode(batches[1], commands[1:], 2**30)  # the line

        async def send(batch: Batch) -> Any:
            a.replicator.sent(batch)
            return await scripts.batch(["fa", str(batch.number), "60000", *limits, *batch.args])

        # Batch 1 failed (NOSCRIPT, say) while batch 2 found the script loaded again:
        assert await send(batches[1]) == [b"gap"]  # not applied before 1
        assert await client.exists([b"logatron:client:x"]) == 0
        assert (await send(batches[0]))[0] == b"ok"
        assert (await send(batches[1]))[0] == b"ok"
        assert await a.mirror() == 0
        assert messages(a, "x") == ["first"]


def test_a_batch_whose_predecessor_was_not_applied_waits_for_it(redis: RedisServer) -> None:
    anyio.run(out_of_order, redis.url())


@pytest.mark.anyio
async def test_a_front_end_told_of_a_gap_registers_again_and_sends_its_batches_again(
    store_url: str,
) -> None:
    async with front_end(store_url) as a, peer(a.tcp_port, b"IAM x\nPING\n") as x:
        assert await x.line() == b"PONG\n"
        # Redis forgets which batches it applied (as if the record were lost): the next batch
        # is not the one after the last it knows of.
        await a.store._client.delete([f"logatron:batch:{a.store.frontend}"])  # type: ignore[union-attr]
        await x.send(b"LOG after the gap\nPING\n")
        assert await x.line() == b"PONG\n"
        assert [entry.message for entry in a.registry.log("x")] == ["after the gap"]
