"""``logatron serve``: the TCP server and its HTTP interface, until Ctrl-C or SIGTERM.

The options become one ``ServeConfig``; ``build_servers`` is the one place that constructs the
registry and the servers from it; ``run`` serves a config and returns the exit status. Startup
prints one line per listening server on stdout, once both listen (the HTTP one as a URL a
browser can open); a port that cannot be bound, or a TLS or auth file that cannot be used, is
one line on stderr and exit status 1. The server's own log goes to stderr: as text, what
happens after the startup lines (which say what its startup records would); as JSON lines,
every record. On an address that is not loopback, it warns (one line) when TLS or tokens are
missing.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import anyio
import anyio.abc
import click

from logatron_core import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_RETAINED,
    DEFAULT_MAX_STATE_KEYS,
    DEFAULT_RETENTION_SECONDS,
    MAX_LINE_BYTES,
    Registry,
    RemoteRegistry,
)

from .. import HttpServer, LogatronServer
from .._durable import DEFAULT_FLUSH_INTERVAL, DataDirError, DurableStore
from .._redis_codec import (
    DEFAULT_LEASE_SECONDS,
    StoreUnavailable,
    StoreUrlError,
    parse_store_url,
    redact,
)
from .common import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    FILE,
    PORT,
    Backend,
    Integer,
    Number,
    backend_option,
    env_option,
    host_option,
    only,
    port_option,
    reason,
    say_error,
    token_option,
    until_signal,
)
from .network import AccessError, server_access, warn_if_exposed
from .serverlog import configure_log, log_stopping

if TYPE_CHECKING:
    from .._redis import RedisStore

__all__ = [
    "Fsync",
    "LogFormat",
    "ServeConfig",
    "Servers",
    "build_servers",
    "http_url",
    "run",
    "serve",
]

LogFormat = Literal["text", "json"]
Fsync = Literal["normal", "always"]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Every setting of ``logatron serve``, in the order the startup log lists them. The
    values are taken as valid: the command's option types check them."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    buffer_size: int = DEFAULT_BUFFER_SIZE
    max_line_bytes: int = MAX_LINE_BYTES
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_state_keys: int = DEFAULT_MAX_STATE_KEYS
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    max_retained: int = DEFAULT_MAX_RETAINED
    backend: Backend = "asyncio"
    log_format: LogFormat = "text"
    http_port: int = 2213
    no_http: bool = False
    data_dir: str | None = None
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    fsync: Fsync = "normal"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_file: str | None = None
    store: str = field(default="memory", repr=False)  # logged without its password
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    token: str | None = field(default=None, repr=False)  # never logged


@dataclass(frozen=True, slots=True)
class Servers:
    """What ``serve`` runs: the TCP server, the HTTP server, the durable store or the shared
    store (if any)."""

    tcp: LogatronServer
    http: HttpServer | None
    durable: DurableStore | None
    shared: RedisStore | None = None


_DEFAULT = ServeConfig()
_F = TypeVar("_F", bound=Callable[..., Any])


def build_servers(config: ServeConfig) -> Servers:
    """The servers over one new registry (read back from ``data_dir`` when given, a mirror of
    the shared store with ``store``): the one place that constructs them. Raises AccessError
    when a TLS or auth file cannot be used, DataDirError when the data directory cannot be
    used, StoreUrlError for a ``store`` that names none."""
    tcp_tls, http_tls, authorizer = server_access(
        config.tls_cert, config.tls_key, config.tls_client_ca, config.token, config.auth_file
    )
    options: dict[str, int | float] = {
        "buffer_size": config.buffer_size,
        "max_clients": config.max_clients,
        "max_state_keys": config.max_state_keys,
        "retention_seconds": config.retention_seconds,
        "max_retained": config.max_retained,
    }
    durable = shared = None
    if parse_store_url(config.store) is not None:
        from .._redis import RedisStore  # coredis is imported only when it is used

        remote = RemoteRegistry(**options)  # type: ignore[arg-type]
        shared = RedisStore(config.store, remote, lease_seconds=config.lease_seconds)
        registry: Registry = remote
    elif config.data_dir is None:
        registry = Registry(**options)  # type: ignore[arg-type]
    else:
        durable = DurableStore.open(
            Path(config.data_dir),
            options,
            flush_interval=config.flush_interval,
            fsync=config.fsync == "always",
        )
        registry = durable.registry
    tcp = LogatronServer(
        config.host,
        config.port,
        registry=registry,
        max_line_bytes=config.max_line_bytes,
        store_driver=durable or shared,
        ssl_context=tcp_tls,
        authorizer=authorizer,
    )
    http = None
    if not config.no_http:
        store = durable or shared
        health = None if store is None else (lambda: store.health)
        http = HttpServer(
            registry,
            config.host,
            config.http_port,
            store_health=health,
            authorizer=authorizer,
            ssl_context=http_tls,
        )
    return Servers(tcp, http, durable, shared)


def run(config: ServeConfig) -> int:
    """Serve until Ctrl-C or SIGTERM (0), or until a port cannot be bound or the data directory
    cannot be used (1, said on stderr in one line).

    The ``logatron`` logger gets a handler on stderr for the run, removed afterwards."""
    log = logging.getLogger("logatron")
    level = log.level
    handler = configure_log(config.log_format, sys.stderr)
    servers = None
    try:
        settings = asdict(config)
        del settings["token"]
        settings["store"] = redact(config.store)
        log.getChild("server").info(
            "starting on %s with %s",
            config.backend,
            ", ".join(f"{key}={value}" for key, value in settings.items()),
            extra={"event": "starting", **settings},
        )
        try:
            servers = build_servers(config)
        except (AccessError, DataDirError, StoreUrlError) as error:
            say_error(str(error))
            return 1
        warn_if_exposed(
            config.host,
            tls=config.tls_cert is not None,
            tokens=bool(config.token or config.auth_file),
            client_certificates=config.tls_client_ca is not None,
        )
        anyio.run(
            until_signal, functools.partial(_serve, servers), log_stopping, backend=config.backend
        )
    except (_CannotListen, StoreUnavailable, ExceptionGroup) as raised:
        cannot = only(raised, _CannotListen) or only(raised, StoreUnavailable)
        if cannot is None:
            raise
        say_error(str(cannot))
        return 1
    finally:
        if servers is not None and servers.durable is not None:
            servers.durable.close()
        log.removeHandler(handler)
        log.setLevel(level)
    return 0


def _format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Addresses that mean "every interface": a browser opens the loopback one instead.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def http_url(address: tuple[str, int], *, tls: bool = False) -> str:
    """The URL of the HTTP server listening on ``address`` (over TLS: ``https``), one a
    browser can open."""
    host, port = address
    scheme = "https" if tls else "http"
    return f"{scheme}://{_format_address((_WILDCARDS.get(host, host), port))}/"


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
        error = only(raised, OSError)
        if error is None:
            raise
        where = _format_address(address)
        raise _CannotListen(f"cannot listen {what}on {where}: {reason(error)}") from None
    return bound


async def _serve(servers: Servers) -> None:
    """Serve until cancelled; with a durable store, its last batch is written once the servers
    have closed every connection."""
    durable, shared = servers.durable, servers.shared
    async with anyio.create_task_group() as tg:
        if durable is not None:
            await tg.start(durable.run)
        if shared is not None:
            await tg.start(shared.run)  # raises StoreUnavailable: nothing listens then
        try:
            await _serve_ports(servers.tcp, servers.http)
        finally:
            with anyio.CancelScope(shield=True):
                if durable is not None:
                    await durable.flush()
                if shared is not None:
                    await shared.stop()
            tg.cancel_scope.cancel()


async def _serve_ports(tcp: LogatronServer, http: HttpServer | None) -> None:
    # Both servers listen before either line is printed; they serve until cancelled.
    async with anyio.create_task_group() as tg:
        address = await _listen(tg, tcp.serve, "", (tcp.host, tcp.port))
        http_address = None
        if http is not None:
            http_address = await _listen(tg, http.serve, "for HTTP ", (http.host, http.port))
        tls = " TLS" if tcp.ssl_context is not None else ""
        print(f"logatron: listening for{tls} clients on {_format_address(address)}", flush=True)
        if http is not None and http_address is not None:
            url = http_url(http_address, tls=http.ssl_context is not None)
            print(f"logatron: HTTP and status page on {url}", flush=True)


def _setting(flag: str, envvar: str, **attrs: Any) -> Callable[[_F], _F]:
    """``env_option`` with ServeConfig's default: the defaults have one source, --help too."""
    return env_option(flag, envvar, default=getattr(_DEFAULT, flag[2:].replace("-", "_")), **attrs)


def _limit(flag: str, envvar: str, minimum: int, metavar: str, help: str) -> Callable[[_F], _F]:
    """An integer ``_setting`` of at least ``minimum``."""
    return _setting(flag, envvar, type=Integer(min=minimum), metavar=metavar, help=help)


@click.command(short_help="run the server")
@host_option("address to listen on")
@port_option("TCP port for clients (0: any free port)")
@_limit("--buffer-size", "LOGATRON_BUFFER_SIZE", 1, "LINES", "lines kept per client")
@_limit("--max-line-bytes", "LOGATRON_MAX_LINE_BYTES", 1, "BYTES", "longest line")
@_limit("--max-clients", "LOGATRON_MAX_CLIENTS", 1, "N", "connected clients at most")
@_limit("--max-state-keys", "LOGATRON_MAX_STATE_KEYS", 1, "N", "state keys per client")
@_setting(
    "--retention-seconds",
    "LOGATRON_RETENTION_SECONDS",
    type=Number(min=0),
    metavar="SECONDS",
    help="how long a disconnected client stays readable (0: forget it at once)",
)
@_limit("--max-retained", "LOGATRON_MAX_RETAINED", 0, "N", "disconnected clients kept at most")
@backend_option
@_setting(
    "--log-format",
    "LOGATRON_LOG_FORMAT",
    type=click.Choice(get_args(LogFormat)),
    help="the server's own log on stderr: text, or json (one object per line)",
)
@_setting(
    "--http-port",
    "LOGATRON_HTTP_PORT",
    type=PORT,
    metavar="PORT",
    help="port of the HTTP API, WebSocket tail and status page (0: any free port)",
)
@_setting("--no-http", "LOGATRON_NO_HTTP", is_flag=True, help="no HTTP interface, TCP only")
@_setting(
    "--data-dir",
    "LOGATRON_DATA_DIR",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="keep every client's lines and state in DIR (created if missing) across restarts; "
    "a PONG then means the lines before it are on disk",
)
@_setting(
    "--flush-interval",
    "LOGATRON_FLUSH_INTERVAL",
    type=Number(min=0.001),
    metavar="SECONDS",
    help="with --data-dir: write at least this often (a PING writes at once)",
)
@_setting(
    "--fsync",
    "LOGATRON_FSYNC",
    type=click.Choice(get_args(Fsync)),
    help="with --data-dir: normal survives a crash of the server; always also a power loss "
    "(each write waits for the disk)",
)
@_setting(
    "--tls-cert",
    "LOGATRON_TLS_CERT",
    type=FILE,
    metavar="FILE",
    help="TLS on both ports (HTTPS, WSS): the server's certificate chain (PEM)",
)
@_setting(
    "--tls-key",
    "LOGATRON_TLS_KEY",
    type=FILE,
    metavar="FILE",
    help="with --tls-cert: its private key (PEM), unless the certificate file holds it",
)
@_setting(
    "--tls-client-ca",
    "LOGATRON_TLS_CLIENT_CA",
    type=FILE,
    metavar="FILE",
    help="with --tls-cert: TCP clients must present a certificate this CA signed, and may "
    "only identify as its common name or a DNS name in it (unless a token grants the name)",
)
@_setting(
    "--auth-file",
    "LOGATRON_AUTH_FILE",
    type=FILE,
    metavar="FILE",
    help="tokens with scopes (TOML: [[token]] with secret or secret_sha256, read, write)",
)
@_setting(
    "--store",
    "LOGATRON_STORE",
    metavar="URL",
    help="memory (in this process), or redis://[user:password@]host:port/db (rediss:// for "
    "TLS): one store in Redis shared by every front end given the same URL",
)
@_setting(
    "--lease-seconds",
    "LOGATRON_LEASE_SECONDS",
    type=Number(min=0.1),
    metavar="SECONDS",
    help="with --store redis://: how long the names of a front end that died stay taken",
)
@token_option(
    "a token that may read (HTTP) and write as any name; then every route but /healthz, "
    "and every TCP client, needs a token"
)
@click.pass_context
def serve(ctx: click.Context, /, **settings: Any) -> None:
    """Run the server until Ctrl-C or SIGTERM. Each flag can also be given as the environment
    variable shown; the flag wins."""
    if (settings["tls_key"] or settings["tls_client_ca"]) and not settings["tls_cert"]:
        raise click.UsageError("--tls-key and --tls-client-ca go with --tls-cert")
    if settings["store"] != "memory" and settings["data_dir"] is not None:
        raise click.UsageError("--data-dir keeps the memory store on disk: not with --store")
    ctx.exit(run(ServeConfig(**settings)))
