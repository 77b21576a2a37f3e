"""The ``logatron`` command: ``logatron serve`` and ``logatron send``.

Every setting of ``serve`` is a flag and a ``LOGATRON_*`` environment variable; the flag wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import anyio
import anyio.abc

from logatron_core import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
    MAX_LINE_BYTES,
    LogatronError,
    Registry,
    is_valid_name,
)

from ._client import ServerRefused, connect
from ._server import LogatronServer

__all__ = ["main"]

_NOT_YET = "(HTTP interface: not yet implemented, accepted and ignored)"
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
    _Setting("--http-port", "LOGATRON_HTTP_PORT", _port, 2213, f"HTTP port {_NOT_YET}"),
    _Setting("--no-http", "LOGATRON_NO_HTTP", _flag, False, f"no HTTP interface {_NOT_YET}"),
    _Setting("--token", "LOGATRON_TOKEN", str, None, f"bearer token for HTTP {_NOT_YET}"),
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
    return _send(parser, args, env)


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
    try:
        anyio.run(_serve_until_signal, server, backend=values["backend"])
    except (OSError, ExceptionGroup) as raised:
        os_error = _os_error(raised)
        if os_error is None:
            raise
        print(
            f"logatron: cannot listen on {values['host']}:{values['port']}: {os_error}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        logging.getLogger("logatron").removeHandler(handler)
        logging.getLogger("logatron").setLevel(level)
    return 0


def _os_error(raised: BaseException) -> OSError | None:
    """The OSError that ``raised`` is, or is a group of only (the first one); else None."""
    while isinstance(raised, BaseExceptionGroup):
        matched, rest = raised.split(OSError)
        if matched is None or rest is not None:
            return None
        raised = matched.exceptions[0]
    return raised if isinstance(raised, OSError) else None


async def _serve_until_signal(server: LogatronServer) -> None:
    # The signal receiver is open before the startup line: a SIGTERM sent as soon as the line
    # is read stops the server cleanly.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            address = await tg.start(server.serve)
            print(f"logatron: listening for clients on {_format_address(address)}", flush=True)
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
