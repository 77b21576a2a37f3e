"""``logatron send NAME``: the ``--set`` state, then every line of stdin as a ``LOG`` line,
then a ``PING`` whose ``PONG`` confirms the server applied them all (exit status 0). With
``--token`` it identifies as ``IAM NAME TOKEN``; with ``--tls`` (or a CA or a client
certificate) it connects over TLS.

Stdin is read in chunks off the event loop and sent a batch of lines per write; a last line
without a newline is sent too. Invalid UTF-8 is sent with U+FFFD replacement characters.
"""

from __future__ import annotations

import ssl
import sys
from typing import BinaryIO

import anyio
import anyio.to_thread
import click

from logatron_core import LogatronError, ServerRefused, is_valid_name

from .. import ConnectionLost, connect
from .common import (
    TlsOptions,
    client_name,
    fail,
    host_option,
    port_option,
    tls_client_options,
    tls_reason,
    token_option,
)

__all__ = ["send"]

# Bytes of stdin read (and so at most sent) per write.
_SEND_BATCH_BYTES = 64 * 1024


def _pairs(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not is_valid_name(key):
            raise click.BadParameter(f"expected KEY=VALUE with a valid key, not {item!r}")
        pairs.append((key, value))
    return pairs


@click.command(short_help="send stdin lines as the log of client NAME")
@click.argument("name", callback=client_name)
@host_option("server address")
@port_option("server port")
@token_option("access token, sent with IAM when the server needs one")
@tls_client_options
@click.option(
    "--set",
    "state",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="set a state key first (repeatable)",
)
def send(
    name: str,
    host: str,
    port: int,
    token: str | None,
    tls: TlsOptions,
    state: list[tuple[str, str]],
) -> None:
    """Send the --set state, then every line of stdin as a LOG line of client NAME, then wait
    until the server confirms it has applied them all."""
    context = tls.context() if tls.wanted else None
    try:
        anyio.run(_send_all, name, host, port, state, sys.stdin.buffer, token, context)
    except ServerRefused as refusal:
        fail(f"the server refused {name!r}: {refusal.code.value}: {refusal.text}")
    except ssl.SSLError as error:
        fail(f"cannot send to {host}:{port}: TLS: {tls_reason(error)}")
    except ConnectionLost as error:
        hint = "" if tls.wanted else " (a TLS port? see --tls and --tls-ca)"
        fail(f"cannot send to {host}:{port}: {error}{hint}")
    except (OSError, TimeoutError, LogatronError) as error:
        fail(f"cannot send to {host}:{port}: {error}")


async def _send_all(
    name: str,
    host: str,
    port: int,
    state: list[tuple[str, str]],
    stdin: BinaryIO,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    async with await connect(name, host, port, token=token, ssl_context=ssl_context) as client:
        for key, value in state:
            await client.set(key, value)
        partial = b""
        while True:
            chunk = await anyio.to_thread.run_sync(_read_some, stdin)
            if not chunk:
                break
            data = partial + chunk
            lines = data.split(b"\n")
            partial = lines.pop()
            if lines:
                await client.log(*(line.decode("utf-8", "replace") for line in lines))
        if partial:
            await client.log(partial.decode("utf-8", "replace"))
        await client.ping(timeout=60.0)


def _read_some(stdin: BinaryIO) -> bytes:
    read1 = getattr(stdin, "read1", None)
    if read1 is not None:
        data: bytes = read1(_SEND_BATCH_BYTES)
        return data
    return stdin.read(_SEND_BATCH_BYTES)
