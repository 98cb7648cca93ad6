"""What /v1/traces and the /ui viewer read: the run log (fslm.logs: every request, and every `fslm run` and
`fslm generate` too), paged and searchable, plus the last N requests in memory. Memory is all there is with the log
off (`--no-log`, FSLM_LOG=0), and what is shown when the log cannot be read; the exact record a request was answered
with is served from it while it is there.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fslm.logs import RunLog, record
from fslm.logs.recording import note_once, problem
from fslm.logs.store import search_words


def summary(rec: dict) -> dict:
    """A request kept in memory, as one line of /v1/traces."""
    keys = ("id", "created", "model", "prompt", "answer", "latency_seconds", "batch_size", "tokens_out")
    return {**{k: rec.get(k) for k in keys}, "log_id": rec.get("log_id"), "kind": "serve", "error": None}


def api_summary(run: dict[str, Any]) -> dict[str, Any]:
    """A run log summary (fslm.logs.RunLog.list) in the shape /v1/traces has always had, plus kind, stack, error."""
    details = run.get("details") or {}
    return {
        "id": run.get("request_id") or str(run["id"]),
        "log_id": run["id"],
        "created": run["created"],
        "kind": run["kind"],
        "model": _served_as(run, details),
        "stack": run.get("stack"),
        "prompt": run.get("prompt") or "",
        "answer": run.get("answer") or "",
        "error": run.get("error"),
        "latency_seconds": details.get("latency_seconds", run.get("seconds") or 0.0),
        "batch_size": details.get("batch_size", 1),
        "tokens_out": run.get("tokens_out") or 0,
    }


def api_record(entry: dict[str, Any]) -> dict[str, Any]:
    """A whole run log entry in the shape of a response's fslm_trace, so the viewer draws any logged run."""
    details = entry.get("details") or {}
    stages = entry.get("trace") or []
    wall = entry.get("wall_seconds") or 0.0
    finish = details.get("finish_reason") or (
        stages[-1].get("finish_reason", "stop") if stages else ("error" if entry.get("error") else "stop")
    )
    return {
        "id": entry.get("request_id") or str(entry["id"]),
        "log_id": entry["id"],
        "created": entry["created"],
        "kind": entry["kind"],
        "model": _served_as(entry, details),
        "stack": entry.get("stack"),
        "engine": entry.get("engine"),
        "prompt": entry.get("prompt") or "",
        "answer": entry.get("answer") or "",
        "error": entry.get("error"),
        "finish_reason": finish,
        "stages": stages,
        "tokens_in": entry.get("tokens_in") or 0,
        "tokens_out": entry.get("tokens_out") or 0,
        "batch_size": details.get("batch_size", 1),
        "queue_seconds": details.get("queue_seconds", 0.0),
        "stack_seconds": details.get("stack_seconds", wall),
        "latency_seconds": details.get("latency_seconds", wall),
        "truncated": bool(entry.get("truncated")),
    }


def _served_as(run: dict[str, Any], details: dict[str, Any]) -> str:
    engine = run.get("engine") or {}
    return str(details.get("served_as") or run.get("stack") or run.get("model") or engine.get("model_ref") or "")


def _matches(rec: dict, words: list[str]) -> bool:
    text = " ".join(
        [rec.get("prompt") or "", rec.get("answer") or "", *(s.get("output") or "" for s in rec.get("stages", ()))]
    ).casefold()
    return all(w.casefold() in text for w in words)


class TraceStore:
    def __init__(self, keep: int = 200, log: RunLog | None = None):
        self.keep = keep
        self.log = log
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def persistent(self) -> bool:
        return self.log is not None

    def add(self, rec: dict) -> None:
        """Keep an answered request's record in memory (cheap: the event loop calls this)."""
        with self._lock:
            if self.keep > 0:
                self._items[rec["id"]] = rec
                while len(self._items) > self.keep:
                    self._items.popitem(last=False)

    def write(self, entry: Callable[[], dict] | dict, rec: dict | None = None) -> None:
        """Append a request to the run log (blocking: call it from a worker thread). Never raises."""
        if self.log is None:
            return
        log_id = record(entry, log=self.log)
        if rec is not None and log_id is not None:
            with self._lock:
                rec["log_id"] = log_id

    def page(self, limit: int = 50, offset: int = 0, query: str | None = None) -> tuple[list[dict], bool]:
        """Summaries newest first, and whether older ones follow."""
        if self.log is not None:
            try:
                runs = self.log.list(limit + 1, offset, query=query)
                return [api_summary(r) for r in runs[:limit]], len(runs) > limit
            except Exception as err:  # noqa: BLE001 - an unreadable log leaves the viewer what memory holds
                note_once(str(self.log.path), problem(err))
        words = search_words(query or "")
        with self._lock:
            newest = [r for r in reversed(self._items.values()) if _matches(r, words)]
        return [summary(r) for r in newest[offset : offset + limit]], len(newest) > offset + limit

    def list(self, limit: int = 50) -> list[dict]:
        return self.page(limit)[0]

    def get(self, trace_id: str) -> dict | None:
        """A request's record as it was answered (from memory), else any logged run by completion id or log id."""
        with self._lock:
            found = self._items.get(trace_id)
        if found is not None or self.log is None:
            return found
        try:
            entry = self.log.get(trace_id)
        except Exception as err:  # noqa: BLE001
            note_once(str(self.log.path), problem(err))
            return None
        return None if entry is None else api_record(entry)

    def close(self) -> None:
        """Nothing stays open between requests (each log write opens its own connection)."""
