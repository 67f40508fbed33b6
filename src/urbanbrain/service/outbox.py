"""The field's records on disk: the outbox, and what the brain refused.

A field must survive any outage of the brain, so what it could not deliver waits in
a file (SQLite, from the standard library: one transaction per append, durable
across a crash of the field) within a bound on its size; past the bound the oldest
events go first, counted. Events leave in the order they came, per channel (the
field's own devices, and the emergency vehicles, which speak with their own key).
Nor may its own disk stop a field: once open, the outbox never raises; what a full
or failing disk refuses is dropped and counted like what the bound pushes out.
The events the brain refused go to `rejected.jsonl` beside it, with its reasons,
also within a bound.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_REJECTS_MAX_BYTES = 64 * 1024 * 1024  # rejected.jsonl: the first refusals say why; a brain refusing
# everything for days must not fill the disk the outbox needs


class Outbox:
    def __init__(self, path: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"buffer: the bound must be positive, not {max_bytes}")
        self._tmp = None if path is not None else tempfile.TemporaryDirectory(prefix="urbanbrain-field-")
        self.path = path if path is not None else Path(self._tmp.name) / "outbox.db"
        self.max_bytes = max_bytes
        self.dropped = 0  # events lost: pushed out by the bound, or refused by the disk
        self.error: str | None = None  # why the disk last refused
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, channel TEXT NOT NULL, "
                         "payload TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, id)")  # a large backlog's
        # channels and oldest events are found without reading its payloads
        self.count, self.bytes = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()

    def append(self, channel: str, payloads: list[str]) -> bool:
        """Keep these events (JSON) behind those already waiting, dropping the oldest
        past the bound; False if the disk refused them (full, failing): they are
        dropped and counted, and `error` says why."""
        if not payloads:
            return True
        try:
            with _Transaction(self._db):
                self._db.executemany("INSERT INTO outbox (channel, payload) VALUES (?, ?)",
                                     [(channel, p) for p in payloads])
        except sqlite3.Error as exc:
            self.error = str(exc)
            self.dropped += len(payloads)
            return False
        self.count += len(payloads)
        self.bytes += sum(len(p) for p in payloads)
        if self.bytes > self.max_bytes:
            self._trim()
        return True

    def oldest(self, channel: str, max_events: int, max_bytes: int) -> list[tuple[int, str]]:
        """The oldest waiting events of a channel, (id, payload), within both limits (at
        least one); none if the disk cannot be read (`error` says why)."""
        chosen, size = [], 0
        try:
            rows = self._db.execute("SELECT id, payload FROM outbox WHERE channel = ? ORDER BY id LIMIT ?",
                                    (channel, max_events))
            for row in rows:  # read lazily: the rows past the byte limit are never fetched
                if chosen and size + len(row[1]) > max_bytes:
                    break
                chosen.append(row)
                size += len(row[1])
        except sqlite3.Error as exc:
            self.error = str(exc)
            return []
        return chosen

    def channels(self) -> list[str]:
        try:
            return [c for (c,) in self._db.execute("SELECT DISTINCT channel FROM outbox ORDER BY channel")]
        except sqlite3.Error as exc:
            self.error = str(exc)
            return []

    def remove(self, rows: list[tuple[int, str]]) -> bool:
        """Forget these delivered events; False if the disk refused (they stay, and are
        sent again: the brain drops what it already has)."""
        if not rows:
            return True
        try:
            with _Transaction(self._db):
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id, _ in rows])
        except sqlite3.Error as exc:
            self.error = str(exc)
            return False
        self.count -= len(rows)
        self.bytes -= sum(len(p) for _, p in rows)
        return True

    def close(self) -> None:
        """Close the file (a temporary outbox is deleted with what is left in it)."""
        self._db.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _trim(self) -> None:
        """Drop the oldest events, of any channel, until the outbox is within its bound."""
        excess = self.bytes - self.max_bytes
        rows = []
        try:
            for row_id, payload in self._db.execute("SELECT id, payload FROM outbox ORDER BY id"):
                if excess <= 0:
                    break
                rows.append((row_id, payload))
                excess -= len(payload)
        except sqlite3.Error as exc:
            self.error = str(exc)
            return
        if self.remove(rows):
            self.dropped += len(rows)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.db.execute("COMMIT")
        finally:
            if self.db.in_transaction:  # an error, or a COMMIT the disk refused: leave none open, or every
                self.db.execute("ROLLBACK")  # later BEGIN would fail


class RejectLog:
    """`rejected.jsonl`: the events the brain refused, one a line with its reasons, for
    a person to read. Bounded: past `max_bytes` (counting what an earlier run left),
    lines are counted in `unwritten` instead of written, and so are those the disk
    refuses (`error` says why)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_REJECTS_MAX_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self.unwritten = 0
        self.error: str | None = None
        try:
            self.size = path.stat().st_size
        except OSError:
            self.size = 0

    def write(self, lines: list[str]) -> bool:
        """Append these lines; False if some were not written."""
        fitting, size = [], self.size
        for line in lines:
            grown = size + len(line.encode()) + 1
            if grown > self.max_bytes:
                self.error = f"it reached its bound of {self.max_bytes / 2**20:g} MiB"
                break
            fitting.append(line)
            size = grown
        try:
            if fitting:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write("".join(line + "\n" for line in fitting))
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            self.unwritten += len(lines)
            return False
        self.size = size
        self.unwritten += len(lines) - len(fitting)
        return len(fitting) == len(lines)


def rejected_line(payload: str, status: int, errors: list[dict]) -> str:
    """One line of the field's record of events the brain refused, with its reasons."""
    return json.dumps({"status": status, "errors": errors, "event": json.loads(payload)})
