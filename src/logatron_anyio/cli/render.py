"""What the consumer commands print: aligned columns with local times for people, one JSON
object per line in the API's shapes for scripts (``--json``). No I/O but through ``Output``.

Control characters (and the line and paragraph separators) in human output are shown escaped:
a log line cannot move the cursor, recolour the terminal or fake a line of its own. JSON lines
carry the text as it is (JSON escapes what needs it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from logatron_core import ClientClosed, ClientExpired, ClientInfo, ClientReady, LogEntry, StateSet

from .. import Current, Gap, Lagged, TailEvent
from .._messages import client_json, dumps, entry_json, tail_event_json

__all__ = [
    "Output",
    "TailPrinter",
    "client_lines",
    "entry_lines",
    "json_line",
    "local_time",
    "printable",
    "state_lines",
    "table",
]

_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_STATE_SUMMARY_CHARS = 60


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def printable(text: str) -> str:
    return _CONTROL.sub(_escape, text)


def local_time(timestamp: float | None) -> str:
    """``2026-11-21 08:45:03.123`` in local time; ``-`` for None."""
    if timestamp is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(timestamp)
    except (OverflowError, OSError, ValueError):
        return str(timestamp)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"


def table(rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> list[str]:
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


def json_line(payload: Any) -> str:
    """One compact JSON object, the API's own encoding."""
    return dumps(payload).decode()


def _state_summary(state: Mapping[str, str]) -> str:
    parts = []
    for key, value in state.items():
        shown = json_line(value) if not value or " " in value else value
        parts.append(f"{key}={shown}")
    return printable(" ".join(parts))


def _cut(text: str, chars: int) -> str:
    """``text`` in at most ``chars`` characters (at least one), ending in … when cut."""
    chars = max(chars, 1)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def client_lines(
    clients: Mapping[str, ClientInfo], as_json: bool, width: int | None = None
) -> list[str]:
    """``logatron clients``: a table sorted by name, or the API's client records.

    The STATE column is cut to fit ``width`` characters (a terminal's), or to
    ``_STATE_SUMMARY_CHARS`` without one."""
    if as_json:
        return [json_line(client_json(info)) for info in clients.values()]
    header = ("NAME", "STATUS", "LINES", "CONNECTED AT")
    rows = [header]
    for name in sorted(clients):
        info = clients[name]
        status = "connected" if info.connected else "retained"
        rows.append((name, status, str(info.lines_received), local_time(info.connected_at)))
    lines = table(rows, right=frozenset({2}))
    padded = max(map(len, lines))
    room = _STATE_SUMMARY_CHARS if width is None else width - padded - 2
    states = [_cut(_state_summary(clients[name].state), room) for name in sorted(clients)]
    return [
        f"{line:<{padded}}  {state}".rstrip()
        for line, state in zip(lines, ["STATE", *states], strict=True)
    ]


def state_lines(name: str, state: Mapping[str, str], as_json: bool) -> list[str]:
    """``logatron state NAME``: aligned KEY VALUE lines, or one ``{"client", "state"}`` object."""
    if as_json:
        return [json_line({"client": name, "state": dict(state)})]
    return table([(key, printable(value)) for key, value in state.items()])


def _entry_line(entry: LogEntry, client_width: int, seq_width: int) -> str:
    message = printable(entry.message) + (" [truncated]" if entry.truncated else "")
    return (
        f"{local_time(entry.timestamp)}  {entry.client:<{client_width}}  "
        f"{'#' + str(entry.seq):>{seq_width}}  {message}"
    ).rstrip()


def entry_lines(entries: Sequence[LogEntry], as_json: bool) -> list[str]:
    """``logatron recent``: TIME CLIENT #SEQ MESSAGE lines, or the API's entries."""
    if as_json:
        return [json_line(entry_json(entry)) for entry in entries]
    client_width = max((len(entry.client) for entry in entries), default=0)
    seq_width = max((len(str(entry.seq)) + 1 for entry in entries), default=0)
    return [_entry_line(entry, client_width, seq_width) for entry in entries]


class Output:
    """Lines to stdout (and notices to stderr), each flushed at once: usable behind ``| grep``."""

    def __init__(self, stdout: TextIO, stderr: TextIO, width: int | None = None) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.width = width  # of the terminal, if the output goes to one (or COLUMNS says)

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


class TailPrinter:
    """Tail events as they come: human lines whose client and seq columns widen as needed, or
    JSON lines. Notices go to stderr: missed lines, ``-- live --`` once the backlog is printed
    (human output only), and ``-- waiting for NAME to connect --`` while the one client
    followed (``name``) is not connected."""

    def __init__(
        self, output: Output, as_json: bool = False, name: str | None = None, connected: bool = True
    ) -> None:
        self.output = output
        self.as_json = as_json
        self.name = name
        self.connected = connected  # the client followed, as far as the events tell
        self.client_width = 8
        self.seq_width = 6

    def event(self, event: TailEvent) -> None:
        if isinstance(event, ClientReady | ClientClosed) and event.name == self.name:
            self.connected = isinstance(event, ClientReady)
        if isinstance(event, Current):
            self._current()
        if self.as_json:
            self.output.line(json_line(tail_event_json(event)))
        elif isinstance(event, LogEntry):
            self._widen(event.client, len(str(event.seq)) + 1)
            self.output.line(_entry_line(event, self.client_width, self.seq_width))
        elif isinstance(event, StateSet):
            self._line(event.name, event.timestamp, f"* set {event.key}={event.value}")
        elif isinstance(event, ClientReady):
            self._line(event.name, event.timestamp, "* connected")
        elif isinstance(event, ClientClosed):
            self._line(event.name, event.timestamp, "* disconnected")
        elif isinstance(event, ClientExpired):
            self._line(event.name, event.timestamp, "* forgotten (retention over)")
        elif isinstance(event, Gap):
            self.output.notice(f"-- {event.missed} lines missed (evicted) --")
        elif isinstance(event, Lagged):
            self.output.notice(f"-- {event.missed} lines missed (this tail fell behind) --")

    def _current(self) -> None:
        if not self.as_json:
            self.output.notice("-- live --")
        if self.name is not None and not self.connected:
            self.output.notice(f"-- waiting for {self.name} to connect --")

    def _widen(self, client: str, seq_chars: int) -> None:
        self.client_width = max(self.client_width, len(client))
        self.seq_width = max(self.seq_width, seq_chars)

    def _line(self, client: str, timestamp: float, text: str) -> None:
        self._widen(client, 0)
        self.output.line(
            f"{local_time(timestamp)}  {client:<{self.client_width}}  "
            f"{'':>{self.seq_width}}  {printable(text)}"
        )
