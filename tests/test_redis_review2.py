"""Review 2: the epoch, the held runs and back-pressure, in corner cases."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from redis_server import RedisServer
from test_redis import front_end, peer


@pytest.fixture
def own_redis(tmp_path: Any) -> Any:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


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
