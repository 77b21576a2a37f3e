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


def test_a_tls_file_whose_path_holds_a_plus_is_the_file_the_url_names(tmp_path: Any) -> None:
    """A '+' in a query is a space only in HTML forms: ``ssl_ca_certs=/certs/ca+1.pem`` names
    that file (a space is written %20)."""
    import trustme

    from logatron_anyio._redis_client import tls_context

    ca = trustme.CA()
    path = tmp_path / "ca+1.pem"
    ca.cert_pem.write_to_path(str(path))
    assert tls_context(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={path}") is not None
    spaced = tmp_path / "ca 2.pem"
    ca.cert_pem.write_to_path(str(spaced))
    encoded = str(spaced).replace(" ", "%20")
    assert tls_context(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={encoded}") is not None


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("ssl_keyfile=/no/such/key.pem", "ssl_keyfile goes with ssl_certfile"),
        ("ssl_cert_reqs=none&ssl_check_hostname=true", "ssl_check_hostname=true checks nothing"),
    ],
)
def test_tls_options_that_would_be_ignored_are_refused(query: str, said: str) -> None:
    from logatron_anyio._redis_client import tls_context
    from logatron_anyio._redis_codec import StoreUrlError

    with pytest.raises(StoreUrlError, match=said):
        tls_context(f"rediss://127.0.0.1:6379/0?{query}")


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
