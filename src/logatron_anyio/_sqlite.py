"""The data directory: one SQLite database (WAL mode) holding what the journal says to keep.

Blocking calls, made from one worker thread at a time (see ``_durable.py``). The layout:

- ``meta``: ``format`` (this module's ``FORMAT_VERSION``), ``last_seq`` (the seq high-water
  mark as of the last batch, so seqs never go back even when every run is deleted) and
  ``reserved_seq`` (the seqs the server may have handed out before writing them: after a
  crash, seqs continue above it, so none shown to a reader is ever reused);
- ``clients``: one row per client record (state as a JSON object);
- ``runs``: one row per run of lines, keyed by its first seq, messages joined by ``"\\n"``
  (no message holds one: the protocol is line-based).

Every batch is one transaction, so a crash leaves the file as it was before or after a batch,
never in between. With ``fsync=False`` (SQLite's ``synchronous=NORMAL`` in WAL mode) a commit
survives the process being killed but a power loss may undo the last commits; with
``fsync=True`` (``synchronous=FULL``) each commit is on the disk before it returns.

A second server on the same directory is refused (an exclusive ``flock`` on ``DIR/lock``), and
so are a directory it cannot write, a database from a newer format and a corrupt file: each
raises :class:`DataDirError` with one line for the operator.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from logatron_core import Batch, StoredClient, StoredRun

__all__ = ["DATABASE_NAME", "FORMAT_VERSION", "DataDirError", "SqliteFile", "Stored"]

# Bumped whenever the layout changes; a server refuses a database with a higher number.
FORMAT_VERSION = 1

DATABASE_NAME = "logatron.sqlite3"
_LOCK_NAME = "lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    connected INTEGER NOT NULL,
    connected_at REAL NOT NULL,
    disconnected_at REAL,
    state TEXT NOT NULL,
    lines_received INTEGER NOT NULL,
    lines_evicted INTEGER NOT NULL,
    evicted_through INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    oldest_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    first_seq INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    truncated INTEGER NOT NULL,
    messages TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_client ON runs (client, last_seq);
"""


class DataDirError(Exception):
    """The data directory cannot be used; ``str()`` is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Everything read back from a data directory."""

    clients: list[StoredClient]
    runs: list[StoredRun]
    last_seq: int
    reserved_seq: int  # at least last_seq


class SqliteFile:
    """An open data directory. Raises DataDirError when it cannot be used (see the module
    comment); ``max_pages`` caps the database's size in pages (a full disk, for tests)."""

    def __init__(self, directory: Path, *, fsync: bool = False, max_pages: int | None = None):
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock = open(directory / _LOCK_NAME, "a+")
        except OSError as error:
            raise DataDirError(f"cannot use data dir {directory}: {_reason(error)}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DataDirError(
                f"data dir {directory} is in use by another logatron server"
            ) from None
        try:
            self._db = self._open(directory / DATABASE_NAME, fsync, max_pages)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, path: Path, fsync: bool, max_pages: int | None) -> sqlite3.Connection:
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise DataDirError(f"cannot use data dir {self.directory}: {path} is not writable")
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise DataDirError(f"cannot use data dir {self.directory}: {error}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
            elif int(row[0]) > FORMAT_VERSION:
                raise DataDirError(
                    f"data dir {self.directory} was written by a newer logatron (format "
                    f"{row[0]}; this one reads up to {FORMAT_VERSION})"
                )
            if max_pages is not None:
                db.execute(f"PRAGMA max_page_count={int(max_pages)}")
        except DataDirError:
            db.close()
            raise
        except sqlite3.DatabaseError as error:
            db.close()
            raise self._unreadable(error) from None
        except ValueError:
            db.close()
            raise DataDirError(f"data dir {self.directory}: bad format version") from None
        return db

    def _unreadable(self, error: Exception) -> DataDirError:
        return DataDirError(
            f"data dir {self.directory}: {DATABASE_NAME} is unreadable ({error}); move it "
            "away to start empty"
        )

    def set_max_pages(self, max_pages: int) -> None:
        """Change the size cap (tests: a disk that fills up, then frees space)."""
        self._db.execute(f"PRAGMA max_page_count={int(max_pages)}")

    def load(self) -> Stored:
        """Everything stored. Raises DataDirError for rows it cannot read."""
        try:
            db = self._db
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            clients = [
                StoredClient(
                    name,
                    bool(connected),
                    connected_at,
                    disconnected_at,
                    json.loads(state),
                    lines_received,
                    lines_evicted,
                    evicted_through,
                    errors,
                    oldest_seq,
                )
                for (
                    name,
                    connected,
                    connected_at,
                    disconnected_at,
                    state,
                    lines_received,
                    lines_evicted,
                    evicted_through,
                    errors,
                    oldest_seq,
                ) in db.execute("SELECT * FROM clients")
            ]
            runs = [
                StoredRun(client, first_seq, timestamp, tuple(messages.split("\n")), bool(cut))
                for first_seq, client, _last, timestamp, cut, messages in db.execute(
                    "SELECT * FROM runs ORDER BY first_seq"
                )
            ]
            last_seq = int(meta.get("last_seq", 0))
            return Stored(clients, runs, last_seq, max(last_seq, int(meta.get("reserved_seq", 0))))
        except (sqlite3.DatabaseError, ValueError, TypeError) as error:
            raise self._unreadable(error) from None

    def reserve(self, reserved_seq: int) -> None:
        """Record that seqs up to ``reserved_seq`` may be handed out before they are written.
        Raises sqlite3.Error or OSError."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('reserved_seq', ?)", (str(reserved_seq),)
            )

    def write(self, batch: Batch, reserved_seq: int | None = None) -> int:
        """Store ``batch`` in one transaction (and ``reserved_seq``, see :meth:`reserve`);
        returns the rows written.

        Raises sqlite3.Error (OperationalError "database or disk is full", ...) or OSError,
        leaving the file as it was before the batch.
        """
        db = self._db
        rows = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for name in batch.forgotten:
                db.execute("DELETE FROM clients WHERE name = ?", (name,))
                db.execute("DELETE FROM runs WHERE client = ?", (name,))
            db.executemany(
                "INSERT OR REPLACE INTO clients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.name,
                        int(c.connected),
                        c.connected_at,
                        c.disconnected_at,
                        json.dumps(c.state, ensure_ascii=False),
                        c.lines_received,
                        c.lines_evicted,
                        c.evicted_through,
                        c.errors,
                        c.oldest_seq,
                    )
                    for c in batch.clients
                ],
            )
            db.executemany(
                "DELETE FROM runs WHERE client = ? AND last_seq < ?",
                [(c.name, c.oldest_seq) for c in batch.clients],
            )
            db.executemany(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        run.first_seq,
                        run.client,
                        run.last_seq,
                        run.timestamp,
                        int(run.truncated),
                        "\n".join(run.messages),
                    )
                    for run in batch.runs
                ],
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(batch.last_seq),))
            if reserved_seq is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('reserved_seq', ?)", (str(reserved_seq),)
                )
            rows = len(batch.forgotten) + 2 * len(batch.clients) + len(batch.runs) + 1
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return rows

    def close(self) -> None:
        """Close the database and release the directory (idempotent)."""
        try:
            self._db.close()
        finally:
            self._lock.close()


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
