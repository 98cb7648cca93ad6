"""Reading and writing the run log: `RunLog` (raises) and the Python twins of `fslm logs ...`.

Reading (`fslm logs ...`) is what the user asked for, so there a problem is a LogError; what runs call to be logged
(never raising) is in `fslm.logs.recording`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fslm.errors import InputError
from fslm.io import atomic_file
from fslm.logs.db import LogError, connect, has_fts, stage_outputs
from fslm.logs.entries import bounded, iso_time
from fslm.settings import get_settings

if TYPE_CHECKING:
    pass

MAX_ROWS = 1 << 62  # LIMIT, OFFSET and --keep past this are the same as this (SQLite integers are 64-bit)
LIST_LIMIT = 20  # runs a listing or search shows unless asked for more
HEAD_CHARS = 1_000  # prompt and answer in listings: enough for any table or card, not a whole document
_SUMMARY = (
    "id, request_id, created, kind, stack, model, dtype, error, tokens_in, tokens_out, seconds, truncated, details, "
    f"substr(prompt, 1, {HEAD_CHARS}) AS prompt, substr(answer, 1, {HEAD_CHARS}) AS answer, "
    "(SELECT COUNT(*) FROM stages WHERE run_id = runs.id) AS stages"
)


class RunLog:
    """One run log file. Every method opens its own short-lived connection, so one object serves many threads."""

    def __init__(self, path: str | Path | None = None, *, max_chars: int | None = None, timeout: float | None = None):
        settings = get_settings()
        self.path = Path(path).expanduser() if path is not None else settings.log_path
        self.max_chars = max_chars or settings.log_max_chars
        self.timeout = timeout  # seconds a write waits for another writer (None: db.BUSY_TIMEOUT_S)

    # ---- writing -----------------------------------------------------------------------------------------------
    def add(self, entry: dict[str, Any]) -> int:
        """Append one entry (texts bounded to max_chars) and return its id. Raises on any problem; see `record`."""
        stored, truncated = bounded({k: v for k, v in entry.items() if k not in ("id", "time")}, self.max_chars)
        stored["truncated"] = truncated
        conn = connect(self.path, create=True, timeout=self.timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                run_id = _insert(conn, stored)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        return run_id

    # ---- reading -----------------------------------------------------------------------------------------------
    @contextmanager
    def _read(self, *, write: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A connection to an existing log (None when there is none yet: reading never creates the file)."""
        if not self.path.exists():
            yield None
            return
        try:
            conn = connect(self.path, create=False)
        except sqlite3.Error as err:
            raise LogError(f"{self.path}: not a usable run log ({err}); move it away or delete it") from None
        try:
            yield conn
        except sqlite3.Error as err:
            raise LogError(
                f"{self.path}: {'could not change' if write else 'could not read'} the run log ({err})"
            ) from None
        finally:
            conn.close()

    def list(
        self,
        limit: int = LIST_LIMIT,
        offset: int = 0,
        *,
        query: str | None = None,
        since: float | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Summaries (prompt and answer heads, totals, details), newest first; `query` as in `search`."""
        with self._read() as conn:
            if conn is None:
                return []
            where, params = _filters(conn, query, since, kind)
            rows = conn.execute(
                f"SELECT {_SUMMARY} FROM runs {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*params, min(limit, MAX_ROWS), min(offset, MAX_ROWS)],
            ).fetchall()
        return [_summary(row) for row in rows]

    def count(self, *, query: str | None = None, since: float | None = None) -> int:
        with self._read() as conn:
            if conn is None:
                return 0
            where, params = _filters(conn, query, since, None)
            return conn.execute(f"SELECT COUNT(*) FROM runs {where}", params).fetchone()[0]

    def get(self, run_id: int | str) -> dict[str, Any] | None:
        """The whole entry of one run: its log id (a number) or, for a server request, its completion id."""
        with self._read() as conn:
            if conn is None:
                return None
            row = conn.execute(f"SELECT id, record FROM runs WHERE {_id_match(run_id)}", (str(run_id),)).fetchone()
        return None if row is None else _entry(row)

    def entries(self, *, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Every entry, oldest first (streamed: an export does not hold the log in memory)."""
        with self._read() as conn:
            if conn is None:
                return
            for row in conn.execute("SELECT id, record FROM runs WHERE created >= ? ORDER BY id", (since or 0.0,)):
                yield _entry(row)

    # ---- removing ----------------------------------------------------------------------------------------------
    def remove(self, run_ids: list[int | str]) -> int:
        """Remove these runs; if any id is not in the log, nothing is removed (InputError naming them)."""
        with self._read(write=True) as conn:
            found: dict[str, int | None] = {}
            for run_id in run_ids:
                row = None
                if conn is not None:
                    row = conn.execute(f"SELECT id FROM runs WHERE {_id_match(run_id)}", (str(run_id),)).fetchone()
                found[str(run_id)] = None if row is None else row[0]
            unknown = [name for name, found_id in found.items() if found_id is None]
            if unknown or conn is None:
                raise InputError(f"no run {', '.join(unknown)} in the log {self.path} (`fslm logs list` shows ids)")
            ids = sorted({found_id for found_id in found.values() if found_id is not None})
            return _delete(conn, f"id IN ({','.join('?' * len(ids))})", ids)

    def prune(self, *, older_than_days: float | None = None, keep: int | None = None) -> int:
        """Remove runs older than `older_than_days` and/or all but the newest `keep`; returns how many went."""
        if older_than_days is None and keep is None:
            raise InputError("prune needs --older-than DAYS or --keep N (or both)")
        if older_than_days is not None and not (math.isfinite(older_than_days) and older_than_days >= 0):
            raise InputError(f"--older-than must be >= 0 days, got {older_than_days}")
        if keep is not None and keep < 0:
            raise InputError(f"--keep must be >= 0, got {keep}")
        conditions, params = [], []
        if older_than_days is not None:
            conditions.append("created < ?")
            params.append(time.time() - older_than_days * 86_400)
        if keep is not None:
            conditions.append("id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?)")
            params.append(min(keep, MAX_ROWS))
        with self._read(write=True) as conn:
            return 0 if conn is None else _delete(conn, " OR ".join(conditions), params)


def _delete(conn: sqlite3.Connection, where: str, params: list[Any]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        gone = conn.execute(f"DELETE FROM runs WHERE {where}", params).rowcount
        if has_fts(conn):
            conn.execute("DELETE FROM runs_fts WHERE rowid NOT IN (SELECT id FROM runs)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back to the file system
    return gone


def _insert(conn: sqlite3.Connection, e: dict[str, Any]) -> int:
    engine = e.get("engine") if isinstance(e.get("engine"), dict) else {}
    trace = [s for s in e.get("trace") or () if isinstance(s, dict)]
    cur = conn.execute(
        "INSERT INTO runs (request_id, created, kind, stack, model, dtype, config_sha256, prompt, answer, error, "
        "tokens_in, tokens_out, seconds, truncated, details, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?)",
        (
            e.get("request_id"),
            float(e["created"]),
            str(e["kind"]),
            e.get("stack"),
            engine.get("model_ref"),
            engine.get("dtype"),
            e.get("config_sha256"),
            str(e.get("prompt") or ""),
            e.get("answer"),
            e.get("error"),
            _number(e.get("tokens_in")),
            _number(e.get("tokens_out")),
            _number(e.get("wall_seconds")),
            int(bool(e.get("truncated"))),
            json.dumps(e.get("details") or {}, ensure_ascii=False, default=str),
            json.dumps(e, ensure_ascii=False, default=str),
        ),
    )
    run_id = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO stages (run_id, position, stage, kind, adapter, tokens_in, tokens_out, seconds, finish_reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                run_id,
                i,
                _text(s.get("stage")),
                _text(s.get("kind")),
                _text(s.get("adapter")),
                _number(s.get("tokens_in")),
                _number(s.get("tokens_out")),
                _number(s.get("seconds")),
                _text(s.get("finish_reason")),
            )
            for i, s in enumerate(trace)
        ],
    )
    if has_fts(conn):
        conn.execute(
            "INSERT INTO runs_fts (rowid, prompt, answer, outputs, error) VALUES (?, ?, ?, ?, ?)",
            (run_id, str(e.get("prompt") or ""), e.get("answer") or "", stage_outputs(e), e.get("error") or ""),
        )
    return run_id


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _id_match(run_id: int | str) -> str:
    """A number is a log id; anything else a server request's completion id (bound as text either way)."""
    text = str(run_id)
    return "id = CAST(? AS INTEGER)" if text.isascii() and text.isdigit() else "request_id = ?"


def _entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = json.loads(row["record"])
    return {"id": row["id"], "time": iso_time(entry["created"]), **entry}


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    out = {key: row[key] for key in row.keys()}
    out["time"] = iso_time(out["created"])
    out["truncated"] = bool(out["truncated"])
    out["details"] = json.loads(out["details"] or "{}")
    return out


def _filters(
    conn: sqlite3.Connection, query: str | None, since: float | None, kind: str | None
) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []
    if since is not None:
        conditions.append("created >= ?")
        params.append(since)
    if kind is not None:
        conditions.append("kind = ?")
        params.append(kind)
    if query is not None and query.strip():
        condition, values = _search(conn, query)
        conditions.append(condition)
        params.extend(values)
    return ("WHERE " + " AND ".join(conditions)) if conditions else "", params


def search_words(text: str) -> list[str]:
    """The words of a search: split on white space; control characters (NUL would end an FTS query) dropped."""
    return "".join(ch if ch.isprintable() else " " for ch in text).split()


def _search(conn: sqlite3.Connection, text: str) -> tuple[str, list[Any]]:
    """Every word must occur (any order, any of prompt, answer, stage outputs, error). FTS5 matches words by prefix
    ("fran" finds "France"); without FTS5, LIKE matches substrings of prompt, answer and error only."""
    words = search_words(text)
    indexed = [w for w in words if any(ch.isalnum() for ch in w)]
    if indexed and has_fts(conn):
        match = " ".join('"' + w.replace('"', '""') + '"*' for w in indexed)
        return "id IN (SELECT rowid FROM runs_fts WHERE runs_fts MATCH ?)", [match]
    conditions, params = [], []
    for word in words or [text]:
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append("(prompt LIKE ? ESCAPE '\\' OR answer LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\')")
        params.extend([pattern] * 3)
    return "(" + " AND ".join(conditions) + ")", params


# ---- runs call these: the log never makes them fail -------------------------------------------------------------

# ---- Python twins of `fslm logs ...` -----------------------------------------------------------------------------


def log_path() -> Path:
    """`fslm logs path`: where runs are logged (FSLM_LOG_DB, default <cache_dir>/logs.db)."""
    return get_settings().log_path


def list_runs(
    limit: int = LIST_LIMIT, offset: int = 0, *, since: float | None = None, path: str | Path | None = None
) -> list[dict[str, Any]]:
    """`fslm logs list`: summaries, newest first."""
    return RunLog(path).list(limit, offset, since=since)


def search_runs(
    text: str, limit: int = LIST_LIMIT, offset: int = 0, *, path: str | Path | None = None
) -> list[dict[str, Any]]:
    """`fslm logs search TEXT`: runs where every word occurs, newest first (FTS5 where SQLite has it, else LIKE)."""
    return RunLog(path).list(limit, offset, query=text)


def get_run(run_id: int | str, *, path: str | Path | None = None) -> dict[str, Any]:
    """`fslm logs show ID`: the whole entry; InputError when the log has no such run."""
    log = RunLog(path)
    entry = log.get(run_id)
    if entry is None:
        raise InputError(f"no run {run_id} in the log {log.path} (`fslm logs list` shows ids)")
    return entry


def export_runs(
    out: str | Path | IO[str] | None = None, *, since: float | None = None, path: str | Path | None = None
) -> int:
    """`fslm logs export --jsonl`: one entry per line, oldest first, to `out` (a stream, default stdout, or a file
    written whole under a temporary name then renamed, so a reader never sees half an export). Returns the count."""
    log = RunLog(path)
    if out is None or not isinstance(out, (str, Path)):
        return _write_lines(log, out or sys.stdout, since)
    with atomic_file(out, text=True) as fh:  # mode 0600, as the log itself: prompts can be private
        return _write_lines(log, fh, since)


def _write_lines(log: RunLog, fh: IO[str], since: float | None) -> int:
    count = 0
    for entry in log.entries(since=since):
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        count += 1
    return count


def remove_runs(run_ids: list[int | str], *, path: str | Path | None = None) -> int:
    """`fslm logs rm ID...`."""
    return RunLog(path).remove(run_ids)


def prune_runs(*, older_than_days: float | None = None, keep: int | None = None, path: str | Path | None = None) -> int:
    """`fslm logs prune`: drop runs older than N days and/or all but the newest N."""
    return RunLog(path).prune(older_than_days=older_than_days, keep=keep)
