"""Recent traces for the viewer: the last N in memory, optionally appended to SQLite so they survive restarts."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("fslm.serve")

SCHEMA = """
CREATE TABLE IF NOT EXISTS serve_traces (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    record TEXT NOT NULL
)
"""


def summary(record: dict) -> dict:
    keys = ("id", "created", "model", "prompt", "answer", "latency_seconds", "batch_size", "tokens_out")
    return {k: record.get(k) for k in keys}


class TraceStore:
    def __init__(self, keep: int = 200, db_path: Path | None = None):
        self.keep = keep
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            self._open(db_path)

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        rows = self._db.execute(
            "SELECT record FROM serve_traces ORDER BY created DESC LIMIT ?", (self.keep,)
        ).fetchall()
        for (text,) in reversed(rows):
            record = json.loads(text)
            self._items[record["id"]] = record

    @property
    def persistent(self) -> bool:
        return self._db is not None

    def add(self, record: dict) -> None:
        with self._lock:
            if self.keep > 0:
                self._items[record["id"]] = record
                while len(self._items) > self.keep:
                    self._items.popitem(last=False)
            if self._db is not None:
                try:
                    self._db.execute(
                        "INSERT OR REPLACE INTO serve_traces VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            record["id"],
                            record["created"],
                            record["model"],
                            record["prompt"],
                            record["answer"],
                            json.dumps(record),
                        ),
                    )
                except sqlite3.Error as err:  # a full disk must not fail the request that was already answered
                    log.warning("could not persist trace %s: %s", record["id"], err)

    def list(self, limit: int = 50) -> list[dict]:
        with self._lock:
            newest = list(reversed(self._items.values()))[:limit]
        return [summary(r) for r in newest]

    def get(self, trace_id: str) -> dict | None:
        with self._lock:
            record = self._items.get(trace_id)
        if record is None and self._db is not None:
            row = self._db.execute("SELECT record FROM serve_traces WHERE id = ?", (trace_id,)).fetchone()
            record = json.loads(row[0]) if row else None
        return record

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
