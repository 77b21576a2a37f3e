"""The ``logatron`` command: ``serve`` (TCP and HTTP), ``send``, and the consumers over HTTP
and WebSocket: ``clients``, ``state``, ``recent`` and ``tail``.

Every setting is a flag and a ``LOGATRON_*`` environment variable; the flag wins. The consumers
print aligned columns with local times by default and one JSON object per line with ``--json``;
an error is one ``logatron: ...`` line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, TextIO, TypeVar

import anyio
import anyio.abc

from logatron_core import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
    MAX_LINE_BYTES,
    ClientClosed,
    ClientReady,
    LogatronError,
    LogEntry,
    Registry,
    StateSet,
    is_valid_name,
)

from ._api import client_json, entry_json, event_json
from ._client import ServerRefused, connect
from ._consumer import (
    Consumer,
    ConsumerError,
    Current,
    Gap,
    NotFound,
    TailEvent,
    Unauthorized,
    Unreachable,
    sort_entries,
)
from ._http import HttpServer
from ._server import LogatronServer
from ._stream import Lagged

__all__ = ["main"]

# Lines of stdin sent per write by `logatron send`.
_SEND_BATCH_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Setting:
    flag: str
    env: str
    convert: Callable[[str], Any]
    default: Any
    help: str


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


def _backend(text: str) -> str:
    if text not in ("asyncio", "trio"):
        raise ValueError(f"unknown backend {text!r} (asyncio or trio)")
    return text


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"unknown log format {text!r} (text or json)")
    return text


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


_SERVE_SETTINGS = (
    _Setting("--host", "LOGATRON_HOST", str, "127.0.0.1", "address to listen on"),
    _Setting("--port", "LOGATRON_PORT", _port, 2212, "TCP port for clients (0: any free port)"),
    _Setting(
        "--buffer-size", "LOGATRON_BUFFER_SIZE", int, DEFAULT_BUFFER_SIZE, "lines kept per client"
    ),
    _Setting(
        "--max-line-bytes", "LOGATRON_MAX_LINE_BYTES", int, MAX_LINE_BYTES, "longest line, bytes"
    ),
    _Setting(
        "--max-clients", "LOGATRON_MAX_CLIENTS", int, DEFAULT_MAX_CLIENTS, "connected clients"
    ),
    _Setting(
        "--max-state-keys",
        "LOGATRON_MAX_STATE_KEYS",
        int,
        DEFAULT_MAX_STATE_KEYS,
        "state keys per client",
    ),
    _Setting(
        "--retention-seconds",
        "LOGATRON_RETENTION_SECONDS",
        float,
        DEFAULT_RETENTION_SECONDS,
        "how long a disconnected client stays readable (0: forget it at once)",
    ),
    _Setting(
        "--max-retained",
        "LOGATRON_MAX_RETAINED",
        int,
        DEFAULT_MAX_RETAINED,
        "disconnected clients kept at most",
    ),
    _Setting("--backend", "LOGATRON_BACKEND", _backend, "asyncio", "asyncio or trio"),
    _Setting(
        "--log-format",
        "LOGATRON_LOG_FORMAT",
        _log_format,
        "text",
        "the server's own log on stderr: text, or json (one object per line)",
    ),
    _Setting(
        "--http-port",
        "LOGATRON_HTTP_PORT",
        _port,
        2213,
        "port of the HTTP API, WebSocket tail and status page (0: any free port)",
    ),
    _Setting("--no-http", "LOGATRON_NO_HTTP", _flag, False, "no HTTP interface, TCP only"),
    _Setting(
        "--token",
        "LOGATRON_TOKEN",
        str,
        None,
        "bearer token every HTTP route but /healthz then requires",
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logatron", description="Logatron: an in-memory logging server."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server until Ctrl-C or SIGTERM. Each flag can also be given as "
        "the environment variable shown; the flag wins.",
    )
    for setting in _SERVE_SETTINGS:
        text = f"{setting.help} [env {setting.env}, default {setting.default}]"
        if setting.flag == "--no-http":
            serve.add_argument(setting.flag, action="store_const", const=True, help=text)
        else:
            serve.add_argument(setting.flag, metavar=setting.flag[2:].upper(), help=text)

    send = commands.add_parser(
        "send",
        help="send stdin lines as the log of client NAME",
        description="Send the --set state, then every line of stdin as a LOG line, then wait "
        "until the server confirms it has applied them all.",
    )
    send.add_argument("name", metavar="NAME", help="the client name")
    send.add_argument("--host", help="server address [env LOGATRON_HOST, default 127.0.0.1]")
    send.add_argument("--port", help="server port [env LOGATRON_PORT, default 2212]")
    send.add_argument(
        "--set",
        dest="state",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a state key first (repeatable)",
    )
    _add_consumer_commands(commands)
    return parser


def _resolve(
    parser: argparse.ArgumentParser, setting: _Setting, given: Any, env: dict[str, str]
) -> Any:
    """The flag's value, else the environment's, else the default; parser.error when invalid."""
    if given is not None and not isinstance(given, str):
        return given
    source, text = (
        (setting.flag, given) if given is not None else (setting.env, env.get(setting.env))
    )
    if text is None:
        return setting.default
    try:
        return setting.convert(text)
    except ValueError as error:
        parser.error(f"{source}: invalid value {text!r}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``logatron`` command; returns the exit status (argparse exits 2 on bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.command == "serve":
        return _serve(parser, args, env)
    if args.command == "send":
        return _send(parser, args, env)
    return _consume(parser, args, env)


# -- serve ---------------------------------------------------------------------------------------


class _JsonFormatter(logging.Formatter):
    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _configure_log(log_format: str, stream: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s logatron %(levelname)s %(message)s"))
    log = logging.getLogger("logatron")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, env: dict[str, str]) -> int:
    values = {
        setting.flag[2:].replace("-", "_"): _resolve(
            parser, setting, getattr(args, setting.flag[2:].replace("-", "_")), env
        )
        for setting in _SERVE_SETTINGS
    }
    try:
        registry = Registry(
            buffer_size=values["buffer_size"],
            max_clients=values["max_clients"],
            max_state_keys=values["max_state_keys"],
            retention_seconds=values["retention_seconds"],
            max_retained=values["max_retained"],
        )
        server = LogatronServer(
            values["host"],
            values["port"],
            registry=registry,
            max_line_bytes=values["max_line_bytes"],
        )
    except ValueError as error:
        parser.error(str(error))
    level = logging.getLogger("logatron").level
    handler = _configure_log(values["log_format"], sys.stderr)
    settings = {key: value for key, value in values.items() if key != "token"}
    logging.getLogger("logatron.server").info(
        "starting on %s with %s",
        values["backend"],
        ", ".join(f"{key}={value}" for key, value in settings.items()),
        extra={"event": "starting", **settings},
    )
    http = (
        None
        if values["no_http"]
        else HttpServer(
            registry,
            values["host"],
            values["http_port"],
            token=values["token"],
        )
    )
    try:
        anyio.run(_serve_until_signal, server, http, backend=values["backend"])
    except (_CannotListen, ExceptionGroup) as raised:
        cannot = _only(raised, _CannotListen)
        if cannot is None:
            raise
        print(f"logatron: {cannot}", file=sys.stderr, flush=True)
        return 1
    finally:
        logging.getLogger("logatron").removeHandler(handler)
        logging.getLogger("logatron").setLevel(level)
    return 0


_E = TypeVar("_E", bound=BaseException)


def _only(raised: BaseException, kind: type[_E]) -> _E | None:
    """The ``kind`` exception that ``raised`` is, or is a group of only (the first); else None."""
    while isinstance(raised, BaseExceptionGroup):
        matched, rest = raised.split(kind)
        if matched is None or rest is not None:
            return None
        raised = matched.exceptions[0]
    return raised if isinstance(raised, kind) else None


class _CannotListen(Exception):
    """A server of ``logatron serve`` could not listen: the one line to print."""


async def _listen(
    tg: anyio.abc.TaskGroup,
    serve: Callable[..., Coroutine[Any, Any, None]],
    what: str,
    address: tuple[str, int],
) -> tuple[str, int]:
    """Start ``serve`` in ``tg``; its bound address. Raises _CannotListen if it cannot listen."""
    try:
        bound: tuple[str, int] = await tg.start(serve)
    except (OSError, ExceptionGroup) as raised:
        error = _only(raised, OSError)
        if error is None:
            raise
        raise _CannotListen(f"cannot listen {what}on {_format_address(address)}: {error}") from None
    return bound


async def _serve_until_signal(server: LogatronServer, http: HttpServer | None) -> None:
    # The signal receiver is open before the startup lines: a SIGTERM sent as soon as they
    # are read stops the server cleanly. Both servers listen before either line is printed.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            address = await _listen(tg, server.serve, "", (server.host, server.port))
            http_address = None
            if http is not None:
                http_address = await _listen(tg, http.serve, "for HTTP ", (http.host, http.port))
            print(f"logatron: listening for clients on {_format_address(address)}", flush=True)
            if http_address is not None:
                print(
                    f"logatron: HTTP and status page on http://{_format_address(http_address)}/",
                    flush=True,
                )
            async for signum in signals:
                logging.getLogger("logatron.server").info(
                    "stopping on %s",
                    signal.Signals(signum).name,
                    extra={"event": "stopping", "signal": signal.Signals(signum).name},
                )
                tg.cancel_scope.cancel()
                break


# -- send ----------------------------------------------------------------------------------------


def _send(parser: argparse.ArgumentParser, args: argparse.Namespace, env: dict[str, str]) -> int:
    host_setting, port_setting = _SERVE_SETTINGS[0], _SERVE_SETTINGS[1]
    host = _resolve(parser, host_setting, args.host, env)
    port = _resolve(parser, port_setting, args.port, env)
    if not is_valid_name(args.name):
        parser.error(f"invalid client name {args.name!r} (1-128 of A-Z a-z 0-9 _ - . : @)")
    state: list[tuple[str, str]] = []
    for item in args.state:
        key, equals, value = item.partition("=")
        if not equals or not is_valid_name(key):
            parser.error(f"--set expects KEY=VALUE with a valid key, not {item!r}")
        state.append((key, value))
    try:
        anyio.run(_send_all, args.name, host, port, state, sys.stdin.buffer)
    except ServerRefused as refusal:
        print(
            f"logatron: the server refused {args.name!r}: {refusal.code.value}: {refusal.text}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except (OSError, TimeoutError, LogatronError) as error:
        print(f"logatron: cannot send to {host}:{port}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


async def _send_all(
    name: str, host: str, port: int, state: list[tuple[str, str]], stdin: BinaryIO
) -> None:
    async with await connect(name, host, port) as client:
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


# -- the consumer commands: clients, state, recent, tail -----------------------------------------

_URL = _Setting("--url", "LOGATRON_URL", str, "http://127.0.0.1:2213", "the server's HTTP address")
_TOKEN = _Setting("--token", "LOGATRON_TOKEN", str, None, "bearer token")
_BACKEND = next(setting for setting in _SERVE_SETTINGS if setting.flag == "--backend")

# Control characters (and the line and paragraph separators) in human output are shown escaped:
# a log line cannot move the cursor, recolour the terminal or fake a line of its own.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_STATE_SUMMARY_CHARS = 60
_DIM, _NORMAL = "\x1b[2m", "\x1b[0m"


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def _printable(text: str) -> str:
    return _CONTROL.sub(_escape, text)


def _local_time(timestamp: float | None) -> str:
    """``2026-11-21 08:45:03.123`` in local time; ``-`` for None."""
    if timestamp is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(timestamp)
    except (OverflowError, OSError, ValueError):
        return str(timestamp)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"


def _table(rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as aligned columns two spaces apart; columns in ``right`` aligned right."""
    if not rows:
        return []
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _state_summary(state: dict[str, str]) -> str:
    parts = []
    for key, value in state.items():
        shown = json.dumps(value, ensure_ascii=False) if not value or " " in value else value
        parts.append(f"{key}={shown}")
    text = _printable(" ".join(parts))
    if len(text) > _STATE_SUMMARY_CHARS:
        text = text[: _STATE_SUMMARY_CHARS - 1] + "…"
    return text


def _entry_line(entry: LogEntry, client_width: int, seq_width: int) -> str:
    message = _printable(entry.message) + (" [truncated]" if entry.truncated else "")
    return (
        f"{_local_time(entry.timestamp)}  {entry.client:<{client_width}}  "
        f"{'#' + str(entry.seq):>{seq_width}}  {message}"
    ).rstrip()


def _json_line(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class _Output:
    """Lines to stdout (and notices to stderr), each flushed at once: usable behind ``| grep``."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.tty = stdout.isatty()

    def line(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def lines(self, texts: Sequence[str]) -> None:
        if texts:
            self.stdout.write("".join(text + "\n" for text in texts))
            self.stdout.flush()

    def notice(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()


class _TailPrinter:
    """Human lines for tail events; the client and seq columns widen as needed."""

    def __init__(self, output: _Output) -> None:
        self.output = output
        self.client_width = 8
        self.seq_width = 6

    def event(self, event: TailEvent) -> None:
        if isinstance(event, LogEntry):
            self._widen(event.client, len(str(event.seq)) + 1)
            self.output.line(_entry_line(event, self.client_width, self.seq_width))
        elif isinstance(event, StateSet):
            self._line(event.name, event.timestamp, f"* set {event.key}={event.value}")
        elif isinstance(event, ClientReady):
            self._line(event.name, event.timestamp, "* connected")
        elif isinstance(event, ClientClosed):
            self._line(event.name, event.timestamp, "* disconnected")
        elif isinstance(event, Gap):
            self.output.notice(f"-- {event.missed} lines missed (evicted) --")
        elif isinstance(event, Lagged):
            self.output.notice(f"-- {event.missed} lines missed (this tail fell behind) --")
        elif self.output.tty:  # Current: only a dim separator, only on a terminal
            self.output.line(f"{_DIM}-- live --{_NORMAL}")

    def _widen(self, client: str, seq_chars: int) -> None:
        self.client_width = max(self.client_width, len(client))
        self.seq_width = max(self.seq_width, seq_chars)

    def _line(self, client: str, timestamp: float, text: str) -> None:
        self._widen(client, 0)
        self.output.line(
            f"{_local_time(timestamp)}  {client:<{self.client_width}}  "
            f"{'':>{self.seq_width}}  {_printable(text)}"
        )


def _event_json(event: TailEvent) -> dict[str, Any]:
    """The API's JSON shape of one tail message."""
    if isinstance(event, LogEntry):
        return {"type": "log", **entry_json(event)}
    if isinstance(event, Current):
        return {"type": "current", "last_seq": event.last_seq}
    if isinstance(event, Gap):
        return {"type": "gap", "missed": event.missed}
    if isinstance(event, Lagged):
        return {"type": "lagged", "missed": event.missed}
    return event_json(event)


def _at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, not {text!r}")
        return value

    return convert


def _add_consumer_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    common = argparse.ArgumentParser(add_help=False)
    for setting in (_URL, _TOKEN, _BACKEND):
        common.add_argument(
            setting.flag,
            metavar=setting.flag[2:].upper(),
            help=f"{setting.help} [env {setting.env}, default {setting.default}]",
        )
    common.add_argument(
        "--json", action="store_true", help="one JSON object per line, in the API's shapes"
    )

    clients = commands.add_parser(
        "clients",
        parents=[common],
        help="list the clients (connected and retained)",
        description="List every client: name, status, lines received, when it connected, "
        "and a summary of its state.",
    )
    state = commands.add_parser(
        "state",
        parents=[common],
        help="show one client's state",
        description="Show one client's state as aligned KEY VALUE lines.",
    )
    state.add_argument("name", metavar="NAME", help="the client name")
    recent = commands.add_parser(
        "recent",
        parents=[common],
        help="print the buffered log lines of every client or one",
        description="Print the buffered log lines (all clients, or NAME) as "
        "TIME CLIENT #SEQ MESSAGE, ordered by seq.",
    )
    recent.add_argument("name", metavar="NAME", nargs="?", help="only this client")
    recent.add_argument(
        "--since", type=_at_least(0), default=0, metavar="SEQ", help="only lines after SEQ"
    )
    recent.add_argument(
        "--limit", type=_at_least(1), metavar="N", help="at most N lines (the oldest after SEQ)"
    )
    recent.add_argument(
        "--sort",
        choices=("seq", "time"),
        default="seq",
        help="order by seq (default) or by timestamp, then seq",
    )
    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="follow the log live",
        description="Print the buffered lines (after --since), then live lines and client "
        "events as they happen, until Ctrl-C or SIGTERM. Reconnects by itself; notices of "
        "missed lines go to stderr as '-- N lines missed (...) --'.",
    )
    tail.add_argument("name", metavar="NAME", nargs="?", help="only this client")
    tail.add_argument(
        "--since",
        type=_at_least(0),
        metavar="SEQ",
        help="only lines after SEQ (default: every buffered line)",
    )
    for command in (clients, state, recent, tail):
        command.set_defaults(command_parser=command)


def _consume(parser: argparse.ArgumentParser, args: argparse.Namespace, env: dict[str, str]) -> int:
    parser = args.command_parser  # errors name the command and show its usage
    url = _resolve(parser, _URL, args.url, env)
    token = _resolve(parser, _TOKEN, args.token, env)
    backend = _resolve(parser, _BACKEND, args.backend, env)
    name: str | None = getattr(args, "name", None)
    if name is not None and not is_valid_name(name):
        parser.error(f"invalid client name {name!r} (1-128 of A-Z a-z 0-9 _ - . : @)")
    try:
        consumer = Consumer(url, token=token or "")
    except ValueError as error:
        parser.error(f"--url: {error}")
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # a message never fails to print
            stream.reconfigure(errors="backslashreplace")
    output = _Output(sys.stdout, sys.stderr)
    command = _COMMANDS[args.command]
    try:
        signum = anyio.run(_until_signal, command, consumer, args, output, backend=backend)
    except (ConsumerError, BrokenPipeError, ExceptionGroup) as raised:
        if _only(raised, BrokenPipeError) is not None:
            # The reader went away (`| head`): nothing more to say, and nothing to flush.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        failure = _only(raised, ConsumerError)
        if failure is None:
            raise
        print(f"logatron: {_explain(failure, url, name)}", file=sys.stderr, flush=True)
        return 1
    if signum is not None and args.command != "tail":
        return 128 + signum  # a one-shot command cut short
    return 0


def _explain(error: ConsumerError, url: str, name: str | None) -> str:
    if isinstance(error, Unauthorized):
        return "unauthorized: check --token or LOGATRON_TOKEN"
    if isinstance(error, NotFound):
        return f"no such client: {name}" if name is not None else f"not found at {url}: {error}"
    if isinstance(error, Unreachable):
        return f"cannot reach {url}: {_reason(error)}"
    return f"bad response from {url}: {error}"


def _reason(error: BaseException) -> str:
    """Why a connection failed, in a few words: the innermost OSError's, else the message."""
    reason = str(error).rpartition(": ")[2] or str(error)
    seen: set[int] = set()
    cause: BaseException | None = error.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            text = os.strerror(cause.errno) if cause.errno > 0 else (cause.strerror or "")
            if text:
                reason = text[0].lower() + text[1:]
        cause = cause.__cause__ or cause.__context__
    return reason


async def _until_signal(
    command: Callable[[Consumer, argparse.Namespace, _Output], Awaitable[None]],
    consumer: Consumer,
    args: argparse.Namespace,
    output: _Output,
) -> int | None:
    """Run ``command`` until it ends or Ctrl-C/SIGTERM; the signal's number, or None."""
    stopped_by: int | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await command(consumer, args, output)
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            async for signum in signals:
                stopped_by = signum
                tg.cancel_scope.cancel()
                break
    return stopped_by


async def _clients(consumer: Consumer, args: argparse.Namespace, output: _Output) -> None:
    clients = await consumer.clients()
    if args.json:
        output.lines([_json_line(client_json(info)) for info in clients.values()])
        return
    rows = [("NAME", "STATUS", "LINES", "CONNECTED AT", "STATE")]
    for name in sorted(clients):
        info = clients[name]
        rows.append(
            (
                name,
                "connected" if info.connected else "retained",
                str(info.lines_received),
                _local_time(info.connected_at),
                _state_summary(info.state),
            )
        )
    output.lines(_table(rows, right=frozenset({2})))


async def _state(consumer: Consumer, args: argparse.Namespace, output: _Output) -> None:
    state = await consumer.state(args.name)
    if args.json:
        output.line(_json_line({"client": args.name, "state": state}))
        return
    output.lines(_table([(key, _printable(value)) for key, value in state.items()]))


async def _recent(consumer: Consumer, args: argparse.Namespace, output: _Output) -> None:
    entries = await consumer.recent(args.name, since=args.since, limit=args.limit)
    if args.sort == "time":
        entries = sort_entries(entries)
    if args.json:
        output.lines([_json_line(entry_json(entry)) for entry in entries])
        return
    client_width = max((len(entry.client) for entry in entries), default=0)
    seq_width = max((len(str(entry.seq)) + 1 for entry in entries), default=0)
    output.lines([_entry_line(entry, client_width, seq_width) for entry in entries])


async def _tail(consumer: Consumer, args: argparse.Namespace, output: _Output) -> None:
    # One request first: an unreachable server or a wrong token ends the command at once,
    # while a connection lost later is retried for as long as it takes.
    await consumer.clients()
    connects = 0

    def on_connect() -> None:
        nonlocal connects
        connects += 1
        if connects > 1:
            output.notice("-- reconnected --")

    printer = _TailPrinter(output)
    async with consumer.tail(args.name, since=args.since, on_connect=on_connect) as events:
        async for event in events:
            if args.json:
                output.line(_json_line(_event_json(event)))
            else:
                printer.event(event)


_COMMANDS: dict[str, Callable[[Consumer, argparse.Namespace, _Output], Awaitable[None]]] = {
    "clients": _clients,
    "state": _state,
    "recent": _recent,
    "tail": _tail,
}
