"""The in-memory store: every client's ring of recent lines, its state and its counters.

Strategy: a client's log is a ring of *runs*: each run is the lines that arrived together, with
its first seq and its timestamp (the seqs of a run are consecutive). A run is kept as the bytes
of its lines (a :class:`Lines`'s encoding: the wire's ``LOG`` lines as they arrived, or the
messages encoded), all of a client's runs one after the other in one ``bytearray``, and its
numbers in two arrays (first seq, line count, flags and byte length; timestamp): a line costs its
bytes plus a few bytes per run, and no object. A client gets these at its first line, and its
state dictionary at its first key: an idle client costs its record only. Storing a run is a copy
of its bytes; eviction drops whole runs from the left (``del data[:n]`` only moves the
bytearray's start) and skips into the oldest one, so the per-line cost of storing is nil. A run
longer than the buffer is cut to its newest ``buffer_size`` lines first (on the bytes), so
memory stays below twice the buffer. Results are built from the runs on demand and are always
copies: each run read is a new :class:`Lines` over a copy of its bytes, parsed only if the
reader looks at its messages. Retained clients are kept in disconnection order, so expiry looks
only at the oldest.
"""

from array import array
from collections.abc import Iterator, Sequence
from itertools import islice

from ._connection import log_messages
from ._errors import NameTaken, NoSuchClient, TooManyClients, TooManyKeys
from ._events import LogEntry, Logged
from ._lines import Lines, Parse, parse_quoted, parse_text
from ._store import ClientInfo, Snapshot, StoredClient, StoredRun

__all__ = ["RUN_FORMS", "MemoryStore"]

# The forms a run's bytes may have, by the number kept in its flags (and by a shared store).
RUN_FORMS: tuple[Parse, ...] = (log_messages, parse_text, parse_quoted)
_FORM_MASK, _TRUNCATED, _COUNT_SHIFT = 0b11, 0b100, 3
# A run's numbers in _Record.runs: first seq, (lines << 3 | truncated << 2 | form), bytes.
_FIELDS = 3


def _bytes(data: bytearray, start: int, end: int) -> bytes:
    """A copy of ``data[start:end]`` as bytes (one copy, and no view left on ``data``)."""
    with memoryview(data) as view:
        return view[start:end].tobytes()


class _Ring:
    """The bytes and numbers of a client's runs, oldest first; made for its first line, so a
    client that logged nothing has none."""

    __slots__ = ("data", "runs", "times")

    def __init__(self) -> None:
        self.data = bytearray()  # the bytes of the runs, one after the other
        self.runs = array("q")  # _FIELDS numbers per run
        self.times = array("d")  # the timestamp of each run


class _Record:
    """One client's record and ring of runs."""

    __slots__ = (
        "buffered",
        "connected",
        "connected_at",
        "disconnected_at",
        "errors",
        "evicted_through",
        "head_skip",
        "lines_evicted",
        "lines_received",
        "name",
        "ring",
        "state",
    )

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.ring: _Ring | None = None
        self.head_skip = 0  # lines of the oldest run already evicted
        self.buffered = 0  # lines in the log
        self.state: dict[str, str] | None = None  # made for the first key
        self.connected = True
        self.connected_at = now
        self.disconnected_at: float | None = None
        self.lines_received = 0
        self.lines_evicted = 0
        self.evicted_through = 0  # seq of the newest evicted line, 0 if none
        self.errors = 0

    def add(self, first: int, timestamp: float, lines: Lines, truncated: bool) -> None:
        """Append a run as it is (no eviction)."""
        ring = self.ring
        if ring is None:
            ring = self.ring = _Ring()
        data, parse = lines.encoded()
        flags = RUN_FORMS.index(parse) | (_TRUNCATED if truncated else 0)
        ring.data += data
        ring.runs.extend((first, len(lines) << _COUNT_SHIFT | flags, len(data)))
        ring.times.append(timestamp)
        self.buffered += len(lines)

    def store(
        self, first: int, timestamp: float, lines: Lines, truncated: bool, buffer_size: int
    ) -> int:
        """Append a run, evicting the oldest lines past ``buffer_size``; returns how many."""
        count = len(lines)
        if count >= buffer_size:
            evicted = self.buffered + count - buffer_size
            keep = count - buffer_size
            if keep:
                self.evicted_through = first + keep - 1
            elif self.ring is not None:
                runs = self.ring.runs
                self.evicted_through = runs[-3] + (runs[-2] >> _COUNT_SHIFT) - 1
            self.ring = None
            self.head_skip = self.buffered = 0
            self.add(first + keep, timestamp, lines.tail(buffer_size), truncated)
            return evicted
        self.add(first, timestamp, lines, truncated)
        ring = self.ring
        assert ring is not None
        runs = ring.runs
        evicted = overflow = self.buffered - buffer_size
        while overflow > 0:
            head_first, head_count = runs[0], runs[1] >> _COUNT_SHIFT
            available = head_count - self.head_skip
            if available > overflow:
                self.head_skip += overflow
                self.evicted_through = head_first + self.head_skip - 1
                break
            del ring.data[: runs[2]]
            del runs[:_FIELDS], ring.times[:1]
            self.evicted_through = head_first + head_count - 1
            self.head_skip = 0
            overflow -= available
        if evicted <= 0:
            return 0
        self.buffered = buffer_size
        return evicted

    def spans(self) -> Iterator[tuple[int, int, int]]:
        """(index, first seq, line count) of each run, oldest first."""
        if self.ring is None:
            return
        runs = self.ring.runs
        for index in range(len(runs) // _FIELDS):
            yield index, runs[index * _FIELDS], runs[index * _FIELDS + 1] >> _COUNT_SHIFT

    def count_since(self, since: int) -> int:
        """How many buffered lines have ``seq > since``."""
        count, skip = 0, self.head_skip
        for _, first, lines in self.spans():
            count += max(0, lines - max(skip, since - first + 1))
            skip = 0
        return count

    def backlog(self, since: int = 0) -> Iterator[Logged]:
        """The buffered runs, cut to the lines with ``seq > since``, oldest first."""
        ring = self.ring
        if ring is None:
            return
        name, skip, runs, data = self.name, self.head_skip, ring.runs, ring.data
        end = 0
        for index, first, count in list(self.spans()):
            flags = runs[index * _FIELDS + 1]
            begin, end = end, end + runs[index * _FIELDS + 2]
            start = max(skip, since - first + 1)
            skip = 0
            if start < count:
                kept = Lines.from_bytes(
                    _bytes(data, begin, end), count, RUN_FORMS[flags & _FORM_MASK]
                )
                yield Logged(
                    name,
                    first + start,
                    ring.times[index],
                    kept.tail(count - start),
                    bool(flags & _TRUNCATED),
                )

    def newest(self, count: int) -> list[Logged]:
        """The newest ``count`` buffered lines as runs, oldest first (no work for the others)."""
        if count <= 0:
            return []
        remaining = count
        for index, first, lines in reversed(list(self.spans())):
            available = lines - (self.head_skip if index == 0 else 0)
            if available >= remaining:
                return list(self.backlog(first + lines - remaining - 1))
            remaining -= available
        return list(self.backlog())

    def oldest_seq(self) -> int | None:
        """The seq of the oldest buffered line (None if none is)."""
        return None if self.ring is None else self.ring.runs[0] + self.head_skip

    def missed_since(self, since: int) -> int:
        """An upper bound of this client's lines with ``seq > since`` that were evicted (the
        seq of every evicted line is not kept)."""
        if since >= self.evicted_through:
            return 0
        return min(self.lines_evicted, self.evicted_through - since)

    def info(self, runs: Iterator[Logged] | list[Logged]) -> ClientInfo:
        return ClientInfo(
            self.name,
            self.connected,
            self.connected_at,
            self.disconnected_at,
            dict(self.state or {}),
            [entry for run in runs for entry in run.entries()],
            self.lines_received,
            self.lines_evicted,
            self.errors,
        )


class MemoryStore:
    """The embedded store (see :class:`~logatron_core.Store` for the contract of each call).

    Not thread-safe: one thread (or one event loop) owns it.
    """

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._retained: dict[str, None] = {}  # disconnected names, oldest first
        self._connected = 0
        self._last_seq = 0
        # Seqs given to no line (after, through): skipped at a restart (see skip_seqs).
        self._skipped: list[tuple[int, int]] = []

    # -- writes --------------------------------------------------------------------------------

    def connect(self, name: str, now: float, max_clients: int) -> None:
        record = self._records.get(name)
        if record is not None and record.connected:
            raise NameTaken(f"{name} is already connected")
        if self._connected >= max_clients:
            raise TooManyClients(f"the server holds its limit of {max_clients} clients")
        if record is None:
            self._records[name] = _Record(name, now)
        else:
            del self._retained[name]
            record.connected, record.connected_at, record.disconnected_at = True, now, None
        self._connected += 1

    def append(
        self,
        name: str,
        messages: Lines,
        now: float,
        truncated: bool,
        buffer_size: int,
    ) -> tuple[int, int]:
        record = self._records[name]
        first = self._last_seq + 1
        count = len(messages)
        self._last_seq += count
        evicted = record.store(first, now, messages, truncated, buffer_size)
        record.lines_received += count
        if evicted:
            record.lines_evicted += evicted
        return first, evicted

    def append_at(
        self,
        name: str,
        first_seq: int,
        now: float,
        messages: Sequence[str],
        truncated: bool,
        buffer_size: int,
    ) -> int:
        """Append a run whose seqs were decided elsewhere (a shared store); returns the lines
        evicted. Raises NoSuchClient."""
        record = self._get(name)
        lines = messages if type(messages) is Lines else Lines(messages)
        self._last_seq = max(self._last_seq, first_seq + len(lines) - 1)
        evicted = record.store(first_seq, now, lines, truncated, buffer_size)
        record.lines_received += len(messages)
        record.lines_evicted += evicted
        return evicted

    def forget(self, name: str) -> bool:
        """Drop ``name``'s record (a shared store expired it); False if there was none."""
        record = self._records.pop(name, None)
        if record is None:
            return False
        if record.connected:
            self._connected -= 1
        else:
            del self._retained[name]
        return True

    def set_state(self, name: str, key: str, value: str, max_keys: int) -> None:
        record = self._get(name)
        state = record.state
        if state is None:
            state = record.state = {}
        if key not in state and len(state) >= max_keys:
            raise TooManyKeys(f"{name} holds its limit of {max_keys} keys")
        state[key] = value

    def disconnect(self, name: str, now: float) -> bool:
        record = self._get(name)
        if not record.connected:
            return False
        record.connected, record.disconnected_at = False, now
        self._connected -= 1
        self._retained[name] = None
        return True

    def expire(self, now: float, retention_seconds: float, max_retained: int) -> list[str]:
        retained, records = self._retained, self._records
        forgotten: list[str] = []
        while retained:
            oldest = next(iter(retained))
            disconnected_at = records[oldest].disconnected_at
            assert disconnected_at is not None
            if len(retained) <= max_retained and now - disconnected_at < retention_seconds:
                break
            del retained[oldest]
            del records[oldest]
            forgotten.append(oldest)
        return forgotten

    def oldest_disconnect(self) -> float | None:
        if not self._retained:
            return None
        return self._records[next(iter(self._retained))].disconnected_at

    def count_error(self, name: str) -> None:
        self._get(name).errors += 1

    # -- reads ---------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def counts(self) -> tuple[int, int]:
        return self._connected, len(self._retained)

    def names(self) -> list[str]:
        return sorted(self._records)

    def client(self, name: str, *, log_limit: int | None = None) -> ClientInfo:
        record = self._get(name)
        return record.info(record.backlog() if log_limit is None else record.newest(log_limit))

    def clients(self, *, log_limit: int | None = None) -> dict[str, ClientInfo]:
        return {name: self.client(name, log_limit=log_limit) for name in self.names()}

    def log(self, name: str, since: int = 0, limit: int | None = None) -> list[LogEntry]:
        runs = self._get(name).backlog(since)
        return list(islice((entry for run in runs for entry in run.entries()), limit))

    def newest(self, name: str, count: int) -> list[Logged]:
        return self._get(name).newest(count)

    def state(self, name: str) -> dict[str, str]:
        return dict(self._get(name).state or {})

    def recent(
        self, since: int = 0, client: str | None = None, limit: int | None = None
    ) -> list[LogEntry]:
        runs = self.snapshot(since, client).runs
        return list(islice((entry for run in runs for entry in run.entries()), limit))

    def snapshot(self, since: int = 0, client: str | None = None) -> Snapshot:
        if client is not None:
            record = self._get(client)
            return Snapshot(list(record.backlog(since)), self._last_seq, record.missed_since(since))
        records = self._records.values()
        runs = [run for record in records for run in record.backlog(since)]
        # The seqs of one run are consecutive and given out at once: runs never interleave.
        runs.sort(key=lambda run: run.first_seq)
        buffered = sum(record.count_since(since) for record in records)
        skipped = sum(end - max(after, since) for after, end in self._skipped if end > since)
        return Snapshot(runs, self._last_seq, max(0, self._last_seq - since - buffered - skipped))

    # -- persistence (see Journal and rebuild) ------------------------------------------------

    def stored_client(self, name: str) -> StoredClient:
        """``name``'s record as a journal stores it. Raises NoSuchClient."""
        record = self._get(name)
        oldest = record.oldest_seq()
        if oldest is None:
            oldest = self._last_seq + 1
        return StoredClient(
            name,
            record.connected,
            record.connected_at,
            record.disconnected_at,
            dict(record.state or {}),
            record.lines_received,
            record.lines_evicted,
            record.evicted_through,
            record.errors,
            oldest,
        )

    def restore(
        self,
        client: StoredClient,
        runs: list[StoredRun],
        now: float,
        *,
        keep_connected: bool = False,
    ) -> None:
        """Add ``client``'s stored record, disconnected (retained after those restored before
        it), with ``runs`` (oldest first) cut to its ``oldest_seq``. With ``keep_connected``
        (a mirror of a shared store, whose connections live on) a connected client stays
        connected."""
        record = _Record(client.name, client.connected_at)
        connected = client.connected and keep_connected
        record.connected = connected
        if not connected:
            record.disconnected_at = now if client.connected else client.disconnected_at
        record.state = dict(client.state) if client.state else None
        record.lines_received = client.lines_received
        record.lines_evicted = client.lines_evicted
        record.evicted_through = client.evicted_through
        record.errors = client.errors
        for run in runs:
            if run.last_seq >= client.oldest_seq:
                record.add(run.first_seq, run.timestamp, Lines(run.messages), run.truncated)
        oldest = record.oldest_seq()
        if oldest is not None:
            record.head_skip = max(0, client.oldest_seq - oldest)
            record.buffered -= record.head_skip
        self._records[client.name] = record
        if connected:
            self._connected += 1
        else:
            self._retained[client.name] = None

    def restore_last_seq(self, last_seq: int) -> None:
        """Seqs continue above ``last_seq``."""
        self._last_seq = max(self._last_seq, last_seq)

    def skip_seqs(self, count: int) -> None:
        """The next ``count`` seqs go to no line (shown before a crash, not stored): not missed."""
        if count > 0:
            self._skipped.append((self._last_seq, self._last_seq + count))
            self._last_seq += count

    def _get(self, name: str) -> _Record:
        record = self._records.get(name)
        if record is None:
            raise NoSuchClient(name)
        return record
