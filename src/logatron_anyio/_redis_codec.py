"""What travels between a front end and Redis: store URLs, batches of commands, the change
stream and the snapshot a mirror is loaded from (see ``_redis_scripts`` for the layout).

Pure functions and small classes, no I/O: ``_redis`` does the talking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from logatron_core import (
    Append,
    Claim,
    MemoryStore,
    Release,
    RemoteRegistry,
    SetKey,
    StoredClient,
    StoredRun,
    decode_run,
    encode_run,
)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "Batch",
    "Encoder",
    "StoreUnavailable",
    "StoreUrlError",
    "apply_change",
    "limits_args",
    "load_snapshot",
    "parse_store_url",
    "redact",
    "refusals",
    "run_place",
    "tls_options",
]

# How long a front end's names outlive it when it dies without a word (issue 9's default).
DEFAULT_LEASE_SECONDS = 10.0
_SCHEMES = ("redis", "rediss")
# What a rediss:// URL may say of TLS (the names coredis and redis-py take), and the values
# each takes (None: a path).
TLS_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "ssl_ca_certs": None,  # the CA certificates to trust instead of the system's
    "ssl_certfile": None,  # a client certificate (Redis's tls-auth-clients)
    "ssl_keyfile": None,  # its key, if not in the same file
    "ssl_check_hostname": ("true", "false"),  # true by default
    "ssl_cert_reqs": ("required", "none"),  # required by default
}


class StoreUrlError(ValueError):
    """A ``--store`` value that names no store Logatron can use (the one line to print)."""


class StoreUnavailable(Exception):
    """The store cannot be used at start (unreachable, refused, other limits): one line."""


def parse_store_url(url: str) -> SplitResult | None:
    """None for ``memory`` (the embedded store); the parts of a ``redis://`` or ``rediss://``
    URL (``[user:password@]host[:port][/db]``). Raises StoreUrlError saying what is wrong."""
    if url == "memory":
        return None
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme not in _SCHEMES:
        raise StoreUrlError(
            f"--store {shown}: not 'memory' nor a redis://[user:password@]host:port/db "
            "or rediss://… URL"
        )
    try:
        port = parts.port
    except ValueError:
        raise StoreUrlError(f"--store {shown}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise StoreUrlError(f"--store {shown}: no host")
    if port == 0:
        raise StoreUrlError(f"--store {shown}: the port is not a number from 1 to 65535")
    db = parts.path.lstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise StoreUrlError(f"--store {shown}: the database ({db!r}) is not a number")
    if parts.fragment:
        raise StoreUrlError(f"--store {shown}: a URL fragment ('#…') means nothing here")
    tls_options(parts)
    return parts


def tls_options(parts: SplitResult) -> dict[str, str]:
    """The TLS options in a store URL's query (``?ssl_ca_certs=PATH&…``: see TLS_OPTIONS).
    Raises StoreUrlError for an unknown or repeated option, a value it does not take, or
    options in a ``redis://`` URL."""
    shown = redact(parts.geturl())
    found: dict[str, list[str]] = {}
    for pair in filter(None, parts.query.split("&")):
        # %xx escapes are decoded, not '+': that is a space in HTML forms only, and a plus in
        # a file's path
        name, _, value = pair.partition("=")
        found.setdefault(unquote(name), []).append(unquote(value))
    options: dict[str, str] = {}
    for name, values in found.items():
        if name not in TLS_OPTIONS:
            known = ", ".join(TLS_OPTIONS)
            raise StoreUrlError(f"--store {shown}: unknown option {name!r} (takes {known})")
        if parts.scheme != "rediss":
            raise StoreUrlError(f"--store {shown}: {name} goes with rediss:// only")
        allowed = TLS_OPTIONS[name]
        if len(values) > 1 or not values[0] or (allowed and values[0] not in allowed):
            takes = " or ".join(allowed) if allowed else "one path"
            raise StoreUrlError(f"--store {shown}: {name} takes {takes}")
        options[name] = values[0]
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise StoreUrlError(f"--store {shown}: ssl_keyfile goes with ssl_certfile")
    if options.get("ssl_cert_reqs") == "none" and options.get("ssl_check_hostname") == "true":
        raise StoreUrlError(
            f"--store {shown}: with ssl_cert_reqs=none, ssl_check_hostname=true checks nothing"
        )
    return options


def redact(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: what logs and errors print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def limits_args(registry: RemoteRegistry) -> list[str]:
    """The deployment's five limits as the scripts take them (compared as text by HELLO)."""
    return [
        str(registry.buffer_size),
        str(registry.max_clients),
        str(registry.max_state_keys),
        repr(float(registry.retention_seconds)),
        str(registry.max_retained),
    ]


@dataclass(slots=True)
class Batch:
    """One call of the BATCH script: its commands (to tell refusals to their sessions), the
    mark to confirm once Redis has them, its arguments, its size in bytes (for the bound on
    what a front end buffers) and its runs' messages by command index (the mirror takes them
    from here rather than read them back from Redis)."""

    number: int
    mark: int
    commands: list[Any] = field(default_factory=list)
    runs: dict[int, Sequence[str]] = field(default_factory=dict)
    args: list[str | bytes] = field(default_factory=list)
    size: int = 0
    sent: bool = False  # once sent, never changed (a batch whose reply was lost is sent again)
    sent_at: float = 0.0  # time.perf_counter() when last sent


class Encoder:
    """Turns a front end's commands into BATCH arguments; names each session's connection
    ``<front end id>:<n>`` and remembers the claims Redis accepted (to claim them again after
    the front end registers anew)."""

    def __init__(self, frontend: str) -> None:
        self.frontend = frontend
        self._count = 0
        self._connections: dict[object, str] = {}  # session -> connection id
        self.held: dict[str, Claim] = {}  # connection id -> its claim, accepted by Redis

    def encode(self, batch: Batch, commands: Iterable[Any], max_bytes: int) -> list[Any]:
        """Add ``commands`` to ``batch`` until it holds ``max_bytes``; returns those left."""
        args, connections = batch.args, self._connections
        left = list(commands)
        for index, command in enumerate(left):
            if batch.size >= max_bytes:
                return left[index:]
            kind = type(command)
            if kind is Claim:
                self._count += 1
                connection = connections[command.session] = f"{self.frontend}:{self._count}"
            else:
                found = connections.get(command.session)
                if found is None:
                    continue  # its claim was refused: nothing of it is stored
                connection = found
            stamp = repr(command.timestamp)
            if kind is Append:
                messages = command.messages
                form, data = encode_run(messages)
                flag = "1" if command.truncated else "0"
                count = str(len(messages))
                args += ("A", connection, command.name, stamp, flag, count, data, str(form))
                batch.size += len(data) + 64
                batch.runs[len(batch.commands)] = messages
            elif kind is SetKey:
                args += ("S", connection, command.name, stamp, command.key, command.value)
                batch.size += len(command.key) + len(command.value) + 64
            else:
                args += ("C" if kind is Claim else "R", connection, command.name, stamp)
                batch.size += 64
                if kind is Release:
                    del connections[command.session]
            batch.commands.append((command, connection))
        return []

    def accepted(self, batch: Batch, refused: set[int]) -> None:
        """Redis applied ``batch``, refusing the commands at the indexes ``refused``."""
        for index, (command, connection) in enumerate(batch.commands):
            kind = type(command)
            if kind is Claim:
                if index in refused:
                    self.forget(connection, command.session)
                else:
                    self.held[connection] = command
            elif kind is Release:
                self.held.pop(connection, None)

    def forget(self, connection: str, session: object) -> None:
        """``connection`` holds no claim any more (refused, or lost to another front end)."""
        self.held.pop(connection, None)
        if self._connections.get(session) == connection:
            del self._connections[session]

    def claims_args(self) -> list[str]:
        """The held claims as HELLO's arguments (``conn name stamp`` each)."""
        args: list[str] = []
        for connection, claim in self.held.items():
            args += (connection, claim.name, repr(claim.timestamp))
        return args


def refusals(result: Sequence[Any], start: int = 2) -> dict[int, tuple[str, str]]:
    """The refusals in a script's result from ``start``: index -> (code, detail)."""
    found: dict[int, tuple[str, str]] = {}
    for at in range(start, len(result) - 2, 3):
        found[int(result[at])] = (_text(result[at + 1]), _text(result[at + 2]))
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run_place(fields: Mapping[Any, Any]) -> tuple[bytes, int, int]:
    """Where a ``logged`` change's run came from: (front end, batch number, command index).
    Raises KeyError/ValueError for an entry that does not say."""
    batch, _, index = fields[b"q"].partition(b".")
    return fields[b"o"], int(batch), int(index)


def apply_change(
    registry: RemoteRegistry,
    fields: Mapping[Any, Any],
    messages: Sequence[str] | bytes | None = None,
) -> None:
    """Apply one entry of the change stream to ``registry``'s mirror (emitting its event).
    A ``logged`` change needs its run's ``messages``: the bytes of its body in Redis (kept as
    they are, parsed when first read), or the messages the front end sent. Raises
    KeyError/ValueError/IndexError for an entry it cannot read, NoSuchClient/NameTaken when
    the mirror does not match the stream: the caller reloads the mirror."""
    kind = fields[b"k"]
    name = fields[b"n"].decode()
    stamp = float(fields[b"t"])
    if kind == b"l":
        if messages is None:
            raise KeyError(f"the messages of the run at {fields[b's'].decode()}")
        if isinstance(messages, bytes):
            messages = decode_run(int(fields[b"f"]), messages, int(fields[b"c"]))
        elif len(messages) != int(fields[b"c"]):
            raise ValueError(f"{len(messages)} messages, not {fields[b'c'].decode()}")
        registry.apply_logged(name, int(fields[b"s"]), stamp, messages, fields[b"x"] == b"1")
    elif kind == b"s":
        key, value = fields[b"a"].decode(), fields[b"v"].decode(errors="replace")
        registry.apply_set(name, key, value, stamp)
    elif kind == b"r":
        registry.apply_ready(name, stamp)
    elif kind == b"c":
        registry.apply_closed(name, stamp)
    elif kind == b"e":
        registry.apply_expired(name, stamp)
    else:
        raise ValueError(f"unknown change {kind!r}")


def _pairs(flat: Sequence[bytes]) -> dict[str, str]:
    return {
        flat[at].decode(): flat[at + 1].decode(errors="replace") for at in range(0, len(flat), 2)
    }


def load_snapshot(result: Sequence[Any], now: float) -> tuple[MemoryStore, int, bytes, bytes]:
    """A mirror built from the SNAPSHOT script's result, the change number it is at, the
    stream id to read on from and the epoch of Redis's data (b"" if none)."""
    changeno, seq, last_id, retained = int(result[0]), int(result[1]), result[2], result[3]
    epoch = result[4] if isinstance(result[4], bytes) else b""
    order = {name: index for index, name in enumerate(retained)}
    clients = sorted(result[5:], key=lambda item: order.get(item[0], -1))
    store = MemoryStore()
    for name_bytes, record_flat, state_flat, runs_flat, ring in clients:
        name = name_bytes.decode()
        record = _pairs(record_flat)
        runs = []
        for meta, body in zip(runs_flat, ring, strict=True):
            first, count, stamp, truncated, form = meta.decode().split(" ")
            messages = tuple(decode_run(int(form), body, int(count)))
            runs.append(StoredRun(name, int(first), float(stamp), messages, truncated == "1"))
        skip = int(record.get("k", "0"))
        client = StoredClient(
            name,
            record.get("c") == "1",
            float(record.get("ca", "0")),
            float(record["da"]) if "da" in record else None,
            _pairs(state_flat),
            int(record.get("r", "0")),
            int(record.get("v", "0")),
            int(record.get("et", "0")),
            0,
            runs[0].first_seq + skip if runs else seq + 1,
        )
        store.restore(client, runs, now, keep_connected=True)
    store.restore_last_seq(seq)
    last = last_id if isinstance(last_id, bytes) else str(last_id).encode()
    return store, changeno, last, epoch
