"""The run log's SQLite file: created user-only, shared by concurrent writers, its schema kept by numbered migrations.

Concurrency: WAL (readers never block the writer, nor the writer them), a busy timeout (a writer waits for another
rather than failing at once) and one short transaction per logged run. Prompts can be private: a new file is 0600
and a folder created for it 0700 (SQLite gives its -wal and -shm files the database's own mode).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from fslm.errors import DataError

BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's write before the run is left unlogged


class LogError(DataError):
    """The run log cannot be used (corrupt, written by a newer fslm, unreadable); the message names the file."""


def create_private(path: Path) -> None:
    """The log file (and any missing folder on the way) created readable by its owner only; an existing one is left
    as it is (its permissions are the user's choice)."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def connect(path: Path, *, create: bool, timeout: float | None = None) -> sqlite3.Connection:
    """An open, migrated connection (autocommit: callers open their own short transactions). sqlite3 errors
    propagate: a writer turns them into a note, a reader into a LogError."""
    if create:
        create_private(path)
    # A missing file is not created by a reader: SQLite would make an empty one with the default mode.
    uri = f"{path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S if timeout is None else timeout, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable except for the last runs on a power cut
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0 and not _tables(conn):
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a fresh file: rm/prune can give space back
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def version(conn: sqlite3.Connection) -> int:
    if "log_schema" not in _tables(conn):
        return 0
    return conn.execute("SELECT COALESCE(MAX(version), 0) FROM log_schema").fetchone()[0]


def has_fts(conn: sqlite3.Connection) -> bool:
    return "runs_fts" in _tables(conn)


# ---- migrations: append one function per schema change; never edit a released one ---------------------------------


def _v1_runs(conn: sqlite3.Connection) -> None:
    """Runs and their stages. `record` holds the whole entry as JSON (every field of a trace, including ones added
    after this schema); the columns beside it are what listing, filtering and SQL by hand need."""
    conn.execute(
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT UNIQUE,
            created REAL NOT NULL,
            kind TEXT NOT NULL,
            stack TEXT,
            model TEXT,
            dtype TEXT,
            config_sha256 TEXT,
            prompt TEXT NOT NULL,
            answer TEXT,
            error TEXT,
            tokens_in INTEGER,
            tokens_out INTEGER,
            seconds REAL,
            truncated INTEGER NOT NULL DEFAULT 0,
            details TEXT,
            record TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX runs_created ON runs (created)")
    conn.execute(
        """CREATE TABLE stages (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            stage TEXT,
            kind TEXT,
            adapter TEXT,
            tokens_in INTEGER,
            tokens_out INTEGER,
            seconds REAL,
            finish_reason TEXT,
            PRIMARY KEY (run_id, position)
        )"""
    )


def _v2_search(conn: sqlite3.Connection) -> None:
    """Full-text search over prompt, answer, stage outputs and error, where SQLite has FTS5 (else search uses LIKE)."""
    import json

    try:
        conn.execute("CREATE VIRTUAL TABLE runs_fts USING fts5(prompt, answer, outputs, error)")
    except sqlite3.OperationalError as err:
        if "fts5" in str(err):
            return
        raise
    for row in conn.execute("SELECT id, prompt, answer, error, record FROM runs").fetchall():
        conn.execute(
            "INSERT INTO runs_fts (rowid, prompt, answer, outputs, error) VALUES (?, ?, ?, ?, ?)",
            (row[0], row[1], row[2] or "", stage_outputs(json.loads(row[4])), row[3] or ""),
        )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1_runs, _v2_search)
SCHEMA_VERSION = len(MIGRATIONS)


def stage_outputs(entry: dict) -> str:
    """What search reads of a trace besides prompt and answer: every stage's output."""
    return "\n".join(str(s.get("output", "")) for s in entry.get("trace") or () if isinstance(s, dict))


def migrate(conn: sqlite3.Connection, path: Path, upto: int = SCHEMA_VERSION) -> None:
    """Bring the file to schema `upto`. Two processes opening an old file at once both get here: the write lock
    (BEGIN IMMEDIATE) makes the second wait, and it finds the work done."""
    if version(conn) >= upto:
        _refuse_newer(conn, path)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS log_schema (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
        for number in range(version(conn) + 1, upto + 1):
            MIGRATIONS[number - 1](conn)
            conn.execute("INSERT INTO log_schema (version, applied) VALUES (?, ?)", (number, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _refuse_newer(conn: sqlite3.Connection, path: Path) -> None:
    found = version(conn)
    if found > SCHEMA_VERSION:
        raise LogError(
            f"{path}: run log schema version {found} is newer than this fslm knows ({SCHEMA_VERSION}); "
            "upgrade fslm, or point FSLM_LOG_DB at another file"
        )
