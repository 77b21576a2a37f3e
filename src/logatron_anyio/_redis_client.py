"""The coredis client of a front end and its four scripts, with what coredis 6.9 needs around it.

Two workarounds, both checked by the test suite (run with ``python -bb`` and warnings as
errors):

- coredis's ``patterns/cache.py`` and ``patterns/pipeline.py`` hold set constants such as
  ``{b"PONG", "PONG"}``; loading them compares bytes with str, which ``python -bb`` turns into
  an error. They are imported here, once, with that warning ignored (the second is otherwise
  imported by the first script call).
- a coredis connection creates six anyio memory streams and closes them only once it has
  connected: each failed attempt (Redis away) leaves them to warn (``ResourceWarning``) when
  collected. :class:`_Connection` closes them whatever happened.
"""

from __future__ import annotations

import hashlib
import ssl
import warnings
from collections.abc import Awaitable, Sequence
from typing import Any

import anyio
import anyio.abc

from logatron_sync._tls import client_context

from ._redis_codec import StoreUrlError, parse_store_url, redact, tls_options
from ._redis_scripts import BATCH, HELLO, JANITOR, SNAPSHOT

with warnings.catch_warnings():
    warnings.simplefilter("ignore", BytesWarning)
    import coredis
    import coredis.connection
    import coredis.exceptions
    import coredis.patterns.pipeline
    import coredis.retry
    from coredis.response.types import StreamEntry

__all__ = [
    "FAILURES",
    "Client",
    "NoScriptError",
    "Pipe",
    "Scripts",
    "StreamEntry",
    "open_client",
    "tls_context",
]

Client = coredis.Redis
# What a call to Redis raises when Redis is away, slow or refusing: the front end retries.
FAILURES = (coredis.exceptions.RedisError, OSError, TimeoutError)
NoScriptError = coredis.exceptions.NoScriptError

CONNECT_TIMEOUT_SECONDS = 5.0
REPLY_TIMEOUT_SECONDS = 10.0  # a Redis that answers nothing for this long is unreachable


class _Connection(coredis.connection.TCPConnection):
    """A TCP connection whose memory streams are closed even when it never connected."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            for stream in (
                self._write_buffer_in,
                self._write_buffer_out,
                self._push_message_buffer_in,
                self._push_message_buffer_out,
                self._streamed_message_buffer_in,
                self._streamed_message_buffer_out,
            ):
                stream.close()


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS context of a ``rediss://`` URL (None for ``redis://``): TLS 1.2 at least, the
    server's certificate checked against the system's CAs or ``ssl_ca_certs``, and its host
    name checked, unless the URL turns them off. Raises StoreUrlError for a URL that names no
    Redis or files that cannot be used."""
    parts = parse_store_url(url)
    if parts is None or parts.scheme != "rediss":
        return None
    options = tls_options(parts)
    try:
        context = client_context(
            options.get("ssl_ca_certs"),
            cert=options.get("ssl_certfile"),
            key=options.get("ssl_keyfile"),
        )
    except (OSError, ssl.SSLError) as error:
        raise StoreUrlError(f"--store {redact(url)}: cannot use its TLS files: {error}") from None
    if options.get("ssl_check_hostname") == "false" or options.get("ssl_cert_reqs") == "none":
        context.check_hostname = False
    if options.get("ssl_cert_reqs") == "none":
        context.verify_mode = ssl.CERT_NONE
    return context


def open_client(
    url: str, *, max_connections: int | None = None, ssl_context: ssl.SSLContext | None = None
) -> coredis.Redis[bytes]:
    """A client of the Redis at ``url`` (not connected yet: use it as ``async with``), replies
    as bytes, no retries of its own (the front end retries, whole batches); over TLS with
    ``ssl_context`` (see :func:`tls_context`; coredis's own default checks no host name)."""
    pool: coredis.ConnectionPool[Any] = coredis.ConnectionPool.from_url(
        url,
        decode_components=True,  # a password's %xx escapes (as for '@' or '/') are decoded
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        stream_timeout=REPLY_TIMEOUT_SECONDS,
        max_connections=max_connections,
        ssl_context=ssl_context,
    )
    pool.connection_class = _Connection
    return coredis.Redis(connection_pool=pool, retry_policy=coredis.retry.NoRetryPolicy())


class Pipe:
    """Calls of one script on a client of one connection (``max_connections=1``): each is
    queued on that connection as it is sent, so Redis runs them in the order sent, and a call
    need not wait for the reply to the one before (the replies come back in order too)."""

    def __init__(self, client: coredis.Redis[bytes], source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def send(self, args: list[str | bytes]) -> Awaitable[Any]:
        """Queue a call; await what this returns for its result (which raises NoScriptError
        when Redis does not hold the script: :meth:`load` it, then send again)."""
        async with self._client.connection_pool.acquire() as connection:
            request: Awaitable[Any] = connection.create_request(b"EVALSHA", self._sha, 0, *args)
        return request

    async def load(self) -> None:
        await self._client.script_load(self._source)


class Scripts:
    """The scripts of ``_redis_scripts``, registered with ``client`` (loaded into Redis at
    their first call, and again after Redis restarted), each returning its result list."""

    def __init__(self, client: coredis.Redis[bytes]) -> None:
        self._batch = client.register_script(BATCH)
        self._hello = client.register_script(HELLO)
        self._janitor = client.register_script(JANITOR)
        self._snapshot = client.register_script(SNAPSHOT)

    async def batch(self, args: list[str | bytes]) -> list[Any]:
        return await _call(self._batch, args)

    async def hello(self, args: list[str]) -> list[Any]:
        return await _call(self._hello, args)

    async def janitor(self, args: list[str]) -> list[Any]:
        return await _call(self._janitor, args)

    async def snapshot(self) -> list[Any]:
        return await _call(self._snapshot, [])


async def _call(script: coredis.commands.Script[bytes], args: Sequence[str | bytes]) -> list[Any]:
    result: Any = await script(args=args)
    return result if isinstance(result, list) else [result]
