"""The Lua scripts against the plain model of a shared store (``SharedStore`` in test_remote).

The same random steps (two front ends, sessions sending IAM/LOG/SET/close, batches sent,
mirrors brought up to date) are played on the model and on Redis: every session must get the
same replies, and every mirror must hold the same clients, logs and state.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from logatron_anyio._redis_client import Client, Scripts, open_client
from logatron_anyio._redis_codec import Batch, Encoder, limits_args, load_snapshot, refusals
from logatron_anyio._redis_mirror import Mirror
from logatron_anyio._redis_scripts import CHANGES_MAXLEN
from logatron_core import ErrorCode, RemoteRegistry, Session, StoreReader
from redis_server import RedisServer, module_redis
from test_remote import MAX_KEYS, FrontEnd, SharedStore

LINES = (
    b"IAM a\n", b"IAM b\n", b"IAM c\n", b"LOG x\nLOG y\n", b"LOG z\n", b"SET k1 v\n",
    b"SET k2 w\nSET k3 u\n", b"PING\n", b"", b"IAM a\nSET k1 v\nSET k2 w\nSET k3 u\nLOG q\n",
)  # fmt: skip
SLOTS = 1  # sessions at a time per front end (a closed one is replaced)
Step = tuple[str, int, int]  # (what, front end, session or line)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 1), st.integers(0, SLOTS * len(LINES) - 1)),
        st.tuples(st.just("sync"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("mirror"), st.integers(0, 1), st.just(0)),
    ),
    max_size=30,
)


redis = pytest.fixture(scope="module")(module_redis)


class RedisFront:
    """A front end over the Lua scripts, without the driver's tasks: ``sync`` sends one
    batch, ``mirror`` applies the changes not applied yet (with the replicator's own steps:
    its runs from the batches it sent, the other front end's from Redis)."""

    def __init__(
        self, client: Client[bytes], scripts: Scripts, frontend: str, max_clients: int
    ) -> None:
        self.registry = RemoteRegistry(buffer_size=3, max_state_keys=MAX_KEYS,
                                       max_clients=max_clients)  # fmt: skip
        self.client = client
        self.scripts = scripts
        self.encoder = Encoder(frontend)
        self.replicator = Mirror(self.registry, frontend, "redis://model", lambda: 0.0,
                                 _raise, lambda: None)  # fmt: skip
        self.batches = 0

    async def hello(self) -> None:
        limits = limits_args(self.registry)
        result = await self.scripts.hello([self.encoder.frontend, "60000", *limits, "0", "0"])
        assert result[0] == b"ok"

    async def sync(self, *, confirm_at_once: bool = True) -> None:
        """Send one batch. The PONGs before it are answered at once (as the model does), or
        as the driver has them answered: by the mirror, once it has the batch's changes."""
        mark, commands = self.registry.take()
        self.batches += 1
        batch = Batch(self.batches, mark)
        assert not self.encoder.encode(batch, commands, 2**30)
        limits = limits_args(self.registry)
        args = [self.encoder.frontend, str(batch.number), "60000", *limits, *batch.args]
        self.replicator.sent(batch)
        result = await self.scripts.batch(args)
        refused = refusals(result)
        self.encoder.accepted(batch, set(refused))
        for index, (code, detail) in refused.items():
            self.registry.refused(batch.commands[index][0], ErrorCode(code), detail, 0.0)
        if confirm_at_once:
            self.registry.committed(mark)
        self.replicator.expect(int(result[1]), batch)

    async def mirror(self) -> int:
        """Apply every change not applied yet; returns how many times it had to reload."""
        reloads = 0
        while await self.replicator.step(self.client, block_ms=None):
            if self.replicator.must_reload:
                reloads += 1
                await self.replicator.reload(self.scripts)
        return reloads


def _raise(error: BaseException) -> None:
    raise error


def view(store: StoreReader) -> Any:
    return {
        name: (info.connected, [(e.seq, e.message) for e in info.log], info.state)
        for name, info in store.clients().items()
    }


async def play(url: str, script: list[Step], max_clients: int) -> None:
    shared = SharedStore(max_clients=max_clients)
    model = [FrontEnd(shared), FrontEnd(shared)]
    for in_model in model:
        in_model.registry = RemoteRegistry(buffer_size=3, max_state_keys=MAX_KEYS,
                                           max_clients=max_clients)  # fmt: skip
    async with open_client(url) as client:
        await client.flushdb()
        scripts = Scripts(client)
        real = [RedisFront(client, scripts, name, max_clients) for name in ("fa", "fb")]
        for front in real:
            await front.hello()
        sessions: list[dict[int, tuple[Session, Session]]] = [{}, {}]
        replies: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        for what, index, number in script:
            if what == "send":
                slot, line = divmod(number, len(LINES))
                pair = sessions[index].get(slot)
                if pair is None or pair[0].closed:
                    pair = Session(model[index].registry), Session(real[index].registry)
                    sessions[index][slot] = pair
                for session in pair:
                    session.receive_data(LINES[line], 1.0 + len(replies))
            elif what == "sync":
                model[index].sync()
                await real[index].sync()
            else:
                model[index].mirror()
                assert await real[index].mirror() == 0
            for index_, by_slot in enumerate(sessions):
                for slot, (model_session, redis_session) in by_slot.items():
                    got = (model_session.data_to_send(), redis_session.data_to_send())
                    old = replies.get((index_, slot), (b"", b""))
                    replies[(index_, slot)] = (old[0] + got[0], old[1] + got[1])
        for index in (0, 1):
            model[index].sync()
            await real[index].sync()
            model[index].mirror()
            assert await real[index].mirror() == 0
            assert view(real[index].registry) == view(model[index].registry)
        # And what a front end starting now would load: the rings and records in Redis.
        loaded, _, _, _ = load_snapshot(await scripts.snapshot(), 9.0)
        assert view(loaded) == view(shared.store)
        for from_model, from_redis in replies.values():
            assert from_redis == from_model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps, max_clients=st.integers(1, 3))
# A ring evicting part of a run; the key limit; a name taken on the other front end.
@example([("send", 0, 0), ("send", 0, 3), ("send", 0, 4), ("send", 0, 4), ("sync", 0, 0)], 3)
@example([("send", 0, 9), ("sync", 0, 0), ("send", 1, 0), ("sync", 1, 0)], 3)
def test_the_scripts_decide_as_the_model_does(
    redis: RedisServer, script: list[Step], max_clients: int
) -> None:
    anyio.run(play, redis.url(), script, max_clients)


async def one_front(client: Client[bytes]) -> RedisFront:
    """Redis emptied, and one front end ``fa`` registered in it."""
    await client.flushdb()
    front = RedisFront(client, Scripts(client), "fa", 3)
    await front.hello()
    return front


async def two_fronts(client: Client[bytes]) -> tuple[RedisFront, RedisFront]:
    await client.flushdb()
    scripts = Scripts(client)
    fronts = RedisFront(client, scripts, "fa", 3), RedisFront(client, scripts, "fb", 3)
    for front in fronts:
        await front.hello()
    return fronts


async def fall_behind(url: str) -> None:
    async with open_client(url) as client:
        a, b = await two_fronts(client)
        session = Session(a.registry)
        session.receive_data(b"IAM x\n", 1.0)
        for number in range(CHANGES_MAXLEN + 300):  # one change each
            session.receive_data(b"LOG %d\n" % number, 2.0)
        await a.sync()
        assert await b.mirror() == 1  # the first changes are gone: it loads everything anew
        assert [e.message for e in b.registry.log("x")] == [str(CHANGES_MAXLEN + 300 - n)
                                                           for n in (3, 2, 1)]  # fmt: skip
        assert b.registry.last_seq == CHANGES_MAXLEN + 300
        session.receive_data(b"LOG after\n", 3.0)
        await a.sync()
        assert await b.mirror() == 0
        assert b.registry.log("x")[-1].message == "after"


def test_a_mirror_further_behind_than_the_change_stream_holds_loads_anew(
    redis: RedisServer,
) -> None:
    anyio.run(fall_behind, redis.url())


async def lose_bodies(url: str) -> None:
    async with open_client(url) as client:
        a, b = await two_fronts(client)
        session = Session(a.registry)
        session.receive_data(b"IAM x\nLOG one\n", 1.0)
        await a.sync()
        await client.delete([b"logatron:bodies:fa"])  # as if trimmed, or expired
        assert await b.mirror() == 1
        assert [e.message for e in b.registry.log("x")] == ["one"]
        # fa has its own run: it never reads its bodies back.
        assert await a.mirror() == 0
        assert [e.message for e in a.registry.log("x")] == ["one"]


def test_a_run_whose_body_is_gone_makes_the_mirror_load_anew(redis: RedisServer) -> None:
    anyio.run(lose_bodies, redis.url())


async def join_late(url: str) -> None:
    async with open_client(url) as client:
        a = await one_front(client)
        scripts = a.scripts
        session = Session(a.registry)
        session.receive_data(b"IAM x\nLOG alone\n", 1.0)
        await a.sync()
        assert await client.exists([b"logatron:bodies:fa"]) == 0  # nobody else would read it
        assert await a.mirror() == 0
        b = RedisFront(client, scripts, "fb", 3)
        await b.hello()
        await b.replicator.reload(scripts)  # as a front end starts: after it registered
        session.receive_data(b"LOG together\n", 2.0)
        await a.sync()
        assert await client.exists([b"logatron:bodies:fa"]) == 1
        assert await b.mirror() == 0 and await a.mirror() == 0
        for front in (a, b):
            assert [e.message for e in front.registry.log("x")] == ["alone", "together"]


def test_a_lone_front_end_writes_no_bodies_until_another_registers(redis: RedisServer) -> None:
    anyio.run(join_late, redis.url())
