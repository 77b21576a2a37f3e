"""``logatron send NAME``: the ``--set`` state, then every line of stdin as a ``LOG`` line,
then a ``PING`` whose ``PONG`` confirms the server applied them all.

Exit status: 0 when every line was stored as sent; 2 when the server refused something on the
way (each ``ERR`` it answered is printed on stderr; the other lines are stored); 1 when it
could not deliver at all (one line on stderr); 128 + N when signal N (Ctrl-C) stopped it.

Stdin is read in chunks as it becomes readable, on the event loop itself (no thread that a
Ctrl-C would leave blocked on the terminal), and sent a batch of lines per write; a last line
without a newline is sent too. Invalid UTF-8 is sent with U+FFFD replacement characters.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import AsyncIterator

import anyio
import click

from logatron_core import ErrorReply, LogatronError, ServerRefused, is_valid_name

from .. import connect
from .common import (
    DEFAULT_PORT,
    client_name,
    fail,
    host_option,
    only,
    port_option,
    reason,
    until_signal,
)

__all__ = ["CONFIRM_SECONDS", "CONNECT_SECONDS", "REFUSED_STATUS", "send"]

# Bytes of stdin read (and so at most sent) per write.
_SEND_BATCH_BYTES = 64 * 1024
# How long the server has to accept the name, and to confirm the lines once stdin has ended.
CONNECT_SECONDS = 10.0
CONFIRM_SECONDS = 60.0
# The exit status when the server refused some of what was sent.
REFUSED_STATUS = 2


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
@click.option(
    "--set",
    "state",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="set a state key first (repeatable)",
)
def send(name: str, host: str, port: int, state: list[tuple[str, str]]) -> None:
    """Send the --set state, then every line of stdin as a LOG line of client NAME, then wait
    until the server confirms it has applied them all. Exits 0 when everything was stored, 2
    when the server refused something (its ERR replies on stderr), 1 when nothing could be
    delivered."""
    refused: list[ErrorReply] = []
    body = functools.partial(_send_all, name, host, port, state, refused)
    try:
        signum = anyio.run(until_signal, body)
    except (ExceptionGroup, LogatronError, OSError) as raised:
        refusal = only(raised, ServerRefused)
        if refusal is not None:
            fail(f"the server refused {name!r}: {refusal.code.value}: {refusal.text}")
        if only(raised, TimeoutError) is not None:
            fail(f"cannot send to {host}:{port}: no answer in time")
        error = only(raised, LogatronError) or only(raised, OSError)
        if error is None:
            raise
        fail(f"cannot send to {host}:{port}: {_explain(error)}")
    if signum is not None:
        raise click.exceptions.Exit(128 + signum)
    for reply in refused:
        print(f"logatron: ERR {reply.code.value} {reply.text}", file=sys.stderr)
    if refused:
        raise click.exceptions.Exit(REFUSED_STATUS)


def _explain(error: Exception) -> str:
    if not isinstance(error, LogatronError):
        return reason(error)  # "connection refused", "name or service not known", ...
    if "'HTTP/" in str(error):  # the HTTP port's answer to IAM
        return f"{error} (an HTTP port: clients send to the TCP port, {DEFAULT_PORT} by default)"
    return str(error)


async def _send_all(
    name: str,
    host: str,
    port: int,
    state: list[tuple[str, str]],
    refused: list[ErrorReply],
) -> None:
    async with await connect(name, host, port, timeout=CONNECT_SECONDS) as client:
        for key, value in state:
            await client.set(key, value)
        partial = b""
        async for chunk in _stdin_chunks(sys.stdin.fileno()):
            data = partial + chunk
            lines = data.split(b"\n")
            partial = lines.pop()
            if lines:
                await client.log(*(line.decode("utf-8", "replace") for line in lines))
        if partial:
            await client.log(partial.decode("utf-8", "replace"))
        await client.ping(timeout=CONFIRM_SECONDS)
        refused.extend(client.errors)


async def _stdin_chunks(fd: int) -> AsyncIterator[bytes]:
    """The chunks read from ``fd`` until its end (a closed stdin: none).

    A terminal, pipe or socket is waited on by the event loop until readable; anything else (a
    file, /dev/null) is read at once: reading it never blocks for long."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return
    pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)
    while True:
        if pollable:
            await anyio.wait_readable(fd)
        chunk = os.read(fd, _SEND_BATCH_BYTES)
        if not chunk:
            return
        yield chunk
