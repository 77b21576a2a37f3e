"""The consumer commands over HTTP and WebSocket: ``clients``, ``state NAME``,
``recent [PATTERN...]`` and ``tail [PATTERN...]`` (with ``--include``/``--exclude``/``-i``).

They share everything but what they fetch: the options ``--url``, ``--token``, ``--backend``
and ``--json`` (``consumer_options``), and one way to run (``_run``): until done or Ctrl-C or
SIGTERM, a lost reader (``| head``) ending quietly, and each failure told in one line with
exit status 1. A one-shot command cut short by a signal exits 128 + its number; ``tail``,
which runs until stopped, exits 0. What they print is ``render``'s.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import click

from .. import (
    Consumer,
    ConsumerError,
    NotFound,
    Unauthorized,
    Unreachable,
    sort_entries,
)
from .._filters import FilterError, client_filter
from .common import (
    Backend,
    Integer,
    backend_option,
    client_name,
    env_option,
    fail,
    only,
    reason,
    token_option,
    until_signal,
)
from .render import Output, TailPrinter, client_lines, entry_lines, state_lines

__all__ = [
    "DEFAULT_TAIL_LINES",
    "RETRY_SECONDS",
    "Common",
    "clients",
    "consumer_options",
    "recent",
    "state",
    "tail",
]

# How often `tail` tries to reconnect, at most, while the server cannot be reached.
RETRY_SECONDS = 2.0
# The buffered lines `tail` starts with, as `tail -f` does.
DEFAULT_TAIL_LINES = 10

_Body = Callable[[Consumer, Output], Awaitable[None]]
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Common:
    """The options every consumer command has."""

    url: str
    token: str | None
    backend: Backend
    json: bool


def _url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The callback of --url: a URL the consumer can use."""
    try:
        Consumer(value, token="")
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None
    return value


_COMMON_OPTIONS = (
    env_option(
        "--url",
        "LOGATRON_URL",
        default="http://127.0.0.1:2213",
        callback=_url,
        metavar="URL",
        help="the server's HTTP address",
    ),
    token_option("bearer token"),
    backend_option,
    click.option("--json", is_flag=True, help="one JSON object per line, in the API's shapes"),
)


def consumer_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the common options (first in --help) and hand them to ``command`` as ``common``."""

    @functools.wraps(command)
    def with_common(
        url: str, token: str | None, backend: Backend, json: bool, **params: Any
    ) -> None:
        command(Common(url, token, backend, json), **params)

    for option in reversed(_COMMON_OPTIONS):
        with_common = option(with_common)
    return with_common


def _run(common: Common, body: _Body, name: str | None = None, *, one_shot: bool = True) -> None:
    """Run ``body`` against the server at ``common.url``; ``name``: the client asked about."""
    consumer = Consumer(common.url, token=common.token or "")
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # a message never fails to print
            stream.reconfigure(errors="backslashreplace")
    output = Output(sys.stdout, sys.stderr, _terminal_width())
    try:
        signum = anyio.run(
            until_signal, functools.partial(body, consumer, output), backend=common.backend
        )
    except (ConsumerError, BrokenPipeError, ExceptionGroup) as raised:
        if only(raised, BrokenPipeError) is not None:
            # The reader went away (`| head`): nothing more to say, and nothing to flush.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        failure = only(raised, ConsumerError)
        if failure is None:
            raise
        fail(_explain(failure, common.url, name))
    if signum is not None and one_shot:
        raise click.exceptions.Exit(128 + signum)  # a one-shot command cut short


def _terminal_width() -> int | None:
    """The width to fit output to: the terminal's (or $COLUMNS), None when not a terminal."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _explain(error: ConsumerError, url: str, name: str | None) -> str:
    if isinstance(error, Unauthorized):
        return "unauthorized: check --token or LOGATRON_TOKEN"
    if isinstance(error, NotFound):
        return f"no such client: {name}" if name is not None else f"not found at {url}: {error}"
    if isinstance(error, Unreachable):
        return f"cannot reach {url}: {reason(error)}"
    if str(error).startswith("HTTP 400: "):
        return f"refused by {url}: {str(error).removeprefix('HTTP 400: ')}"
    return f"bad response from {url}: {error}"


@click.command(short_help="list the clients (connected and retained)")
@consumer_options
def clients(common: Common) -> None:
    """List every client: name, status, lines received, when it connected, and a summary of
    its state."""

    async def body(consumer: Consumer, output: Output) -> None:
        output.lines(client_lines(await consumer.clients(), common.json, output.width))

    _run(common, body)


@click.command(short_help="show one client's state")
@consumer_options
@click.argument("name", callback=client_name)
def state(common: Common, name: str) -> None:
    """Show the state of client NAME as aligned KEY VALUE lines."""

    async def body(consumer: Consumer, output: Output) -> None:
        output.lines(state_lines(name, await consumer.state(name), common.json))

    _run(common, body, name)


def _lines_option(default: str, help: str) -> Callable[[_F], _F]:
    """``-n N`` / ``--lines N``: the newest N lines, as ``tail -n`` (the parameter ``newest``)."""
    return click.option(
        "-n",
        "--lines",
        "newest",
        type=Integer(min=0),
        metavar="N",
        show_default=default,
        help=help,
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """What ``recent`` and ``tail`` ask the server to keep: client names or shell-style
    patterns (none: every client) and RE2 patterns the lines must match (any include, no
    exclude)."""

    clients: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    @property
    def name(self) -> str | None:
        """The one client asked about, if one name (no pattern) was given."""
        matches = client_filter(self.clients)
        return None if matches is None else matches.exact

    def query(self) -> dict[str, Any]:
        """The consumer's arguments."""
        return {"client": self.clients or None, "include": self.include, "exclude": self.exclude}


def _client_patterns(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        client_filter(value)
    except FilterError as error:
        raise click.BadParameter(str(error)) from None
    return value


def filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """PATTERN... and --include/--exclude/-i, handed to ``command`` as ``filters``."""

    @functools.wraps(command)
    def with_filters(
        *args: Any,
        patterns: tuple[str, ...],
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        ignore_case: bool,
        **params: Any,
    ) -> None:
        if ignore_case:
            include, exclude = (tuple(f"(?i){p}" for p in ps) for ps in (include, exclude))
        command(*args, filters=Filters(patterns, include, exclude), **params)

    options = (
        click.argument("patterns", nargs=-1, metavar="[PATTERN]...", callback=_client_patterns),
        click.option("--include", multiple=True, metavar="RE",
                     help="only lines matching RE (RE2 syntax; repeat: any of them)"),
        click.option("--exclude", multiple=True, metavar="RE",
                     help="no lines matching RE (repeatable)"),
        click.option("-i", "--ignore-case", is_flag=True,
                     help="--include and --exclude ignore case"),
    )  # fmt: skip
    for option in reversed(options):
        with_filters = option(with_filters)
    return with_filters


@click.command(short_help="print the buffered log lines of every client or some")
@consumer_options
@filter_options
@_lines_option("every buffered line", "the newest N lines (after SEQ)")
@click.option("--since", type=Integer(min=0), default=0, metavar="SEQ", help="only lines after SEQ")
@click.option(
    "--limit",
    type=Integer(min=1),
    metavar="N",
    help="the oldest N lines after SEQ (to page forward; not with -n)",
)
@click.option(
    "--sort",
    type=click.Choice(("seq", "time")),
    default="seq",
    help="order by seq, or by timestamp then seq",
)
def recent(
    common: Common,
    filters: Filters,
    newest: int | None,
    since: int,
    limit: int | None,
    sort: str,
) -> None:
    """Print the buffered log lines (of every client, or of those each PATTERN names: a name
    or a shell-style pattern such as 'worker-*') as TIME CLIENT #SEQ MESSAGE, ordered by
    seq."""
    if newest is not None and limit is not None:
        raise click.UsageError("-n takes the newest lines, --limit the oldest: give one of them")

    async def body(consumer: Consumer, output: Output) -> None:
        query = filters.query()
        entries = await consumer.recent(**query, since=since, limit=limit, newest=newest)
        if sort == "time":
            entries = sort_entries(entries)
        output.lines(entry_lines(entries, common.json))

    _run(common, body, filters.name)


@click.command(short_help="follow the log live")
@consumer_options
@filter_options
@_lines_option(
    f"{DEFAULT_TAIL_LINES}, or every line after --since",
    "start with the newest N buffered lines (0: live lines only)",
)
@click.option("--since", type=Integer(min=0), metavar="SEQ", help="only lines after SEQ")
def tail(common: Common, filters: Filters, newest: int | None, since: int | None) -> None:
    """Print the newest buffered lines (of every client, or of those each PATTERN names,
    clients that connect later included), then live lines and client events as they happen,
    until Ctrl-C or SIGTERM. Reconnects by itself, resuming
    after the last line printed; notices go to stderr ('-- live --', '-- N lines missed
    (...) --', '-- waiting for NAME to connect --')."""
    if newest is None and since is None:
        newest = DEFAULT_TAIL_LINES  # as tail -f does
    name = filters.name

    async def body(consumer: Consumer, output: Output) -> None:
        # One request first: an unreachable server or a wrong token ends the command at once,
        # while a connection lost later is retried for as long as it takes.
        known = await consumer.clients()
        connected = name is None or (name in known and known[name].connected)
        printer = TailPrinter(output, common.json, name, connected)
        connects = 0
        outage = False

        def on_connect() -> None:
            nonlocal connects, outage
            connects += 1
            if connects > 1:
                output.notice("-- reconnected --")
            outage = False

        def on_retry(error: ConsumerError | None) -> None:
            nonlocal outage
            if error is not None and not outage:  # said once per outage
                outage = True
                what = "server unreachable" if isinstance(error, Unreachable) else str(error)
                output.notice(f"-- {what}, retrying every {RETRY_SECONDS:g} s --")

        events = consumer.tail(
            **filters.query(),
            since=since,
            newest=newest,
            on_connect=on_connect,
            on_retry=on_retry,
            max_backoff=RETRY_SECONDS,
        )
        async with events:
            async for event in events:
                printer.event(event)

    _run(common, body, name, one_shot=False)
