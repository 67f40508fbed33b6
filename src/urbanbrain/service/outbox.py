"""The field's outbox on disk: device events the brain has not acknowledged yet.

A field must survive any outage of the brain, so what it could not deliver waits in
a file (SQLite, from the standard library: one transaction per append, durable
across a crash of the field) within a bound on its size; past the bound the oldest
events go first, counted. Events leave in the order they came, per channel (the
field's own devices, and the emergency vehicles, which speak with their own key).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class Outbox:
    def __init__(self, path: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"buffer: the bound must be positive, not {max_bytes}")
        self._tmp = None if path is not None else tempfile.TemporaryDirectory(prefix="urbanbrain-field-")
        self.path = path if path is not None else Path(self._tmp.name) / "outbox.db"
        self.max_bytes = max_bytes
        self.dropped = 0  # events lost to the bound
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, channel TEXT NOT NULL, "
                         "payload TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, id)")  # a large backlog's
        # channels and oldest events are found without reading its payloads
        self.count, self.bytes = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()

    def append(self, channel: str, payloads: list[str]) -> None:
        """Keep these events (JSON) behind those already waiting; drop the oldest past the bound."""
        if not payloads:
            return
        with _Transaction(self._db):
            self._db.executemany("INSERT INTO outbox (channel, payload) VALUES (?, ?)", [(channel, p) for p in payloads])
        self.count += len(payloads)
        self.bytes += sum(len(p) for p in payloads)
        if self.bytes > self.max_bytes:
            self._trim()

    def oldest(self, channel: str, max_events: int, max_bytes: int) -> list[tuple[int, str]]:
        """The oldest waiting events of a channel, (id, payload), within both limits (at least one)."""
        rows = self._db.execute("SELECT id, payload FROM outbox WHERE channel = ? ORDER BY id LIMIT ?",
                                (channel, max_events))
        chosen, size = [], 0
        for row in rows:  # read lazily: the rows past the byte limit are never fetched
            if chosen and size + len(row[1]) > max_bytes:
                break
            chosen.append(row)
            size += len(row[1])
        return chosen

    def channels(self) -> list[str]:
        return [c for (c,) in self._db.execute("SELECT DISTINCT channel FROM outbox ORDER BY channel")]

    def remove(self, rows: list[tuple[int, str]]) -> None:
        if not rows:
            return
        with _Transaction(self._db):
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id, _ in rows])
        self.count -= len(rows)
        self.bytes -= sum(len(p) for _, p in rows)

    def close(self) -> None:
        self._db.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _trim(self) -> None:
        excess = self.bytes - self.max_bytes
        rows = []
        for row_id, payload in self._db.execute("SELECT id, payload FROM outbox ORDER BY id"):
            if excess <= 0:
                break
            rows.append((row_id, payload))
            excess -= len(payload)
        self.remove(rows)
        self.dropped += len(rows)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def rejected_line(payload: str, status: int, errors: list[dict]) -> str:
    """One line of the field's record of events the brain refused, with its reasons."""
    return json.dumps({"status": status, "errors": errors, "event": json.loads(payload)})
