"""A log entry: one run as plain JSON data, built by pure functions from what the run returned.

An entry is `StackResult.to_dict()` (prompt, answer, trace, totals, and any field added to it later) with the
run's identity and kind around it. The trace is stored as it comes, so a new stage field or stage kind is logged
without a change here; only the columns beside it (db.py) name fields.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fslm.io import printable

if TYPE_CHECKING:
    from fslm.collaborate.generate import GenerateResult
    from fslm.stack import Stack, StackResult

KINDS = ("run", "serve", "generate")
TRUNCATED = "\n[… {cut} more characters not kept by the fslm run log]"


def stack_identity(stack: Stack) -> dict[str, Any]:
    """What the run ran: stack name and config hash, each adapter's sha256 (its files' bytes, not its path) and
    the engines (model reference and dtype; llama.cpp engines say `llamacpp-<weight format>`). Hashing reads the
    adapter files once: callers that log many runs of one stack (the server) keep the result."""
    from fslm.stack_cache import adapter_digest

    cfg = stack.config
    adapters: dict[str, str | None] = {}
    for stage in cfg.stages:
        path = cfg.adapter_path(stage)
        if path is not None:
            try:
                adapters[stage.name] = adapter_digest(path)
            except Exception:  # noqa: BLE001 - a missing file costs the hash, not the log entry
                adapters[stage.name] = None
    identity = {
        "stack": cfg.name,
        "stack_path": str(cfg.source_path) if cfg.source_path else None,
        "config_sha256": hashlib.sha256(cfg.to_yaml().encode("utf-8")).hexdigest(),
        "adapters": adapters,
        "engine": engine_identity(stack.engine),  # the base model's
    }
    engines = getattr(stack, "engines", None) or {}
    if len(engines) > 1:  # stages on other models: each one's engine too
        identity["engines"] = {str(ref): engine_identity(e) for ref, e in engines.items()}
    return identity


def engine_identity(engine: Any) -> dict[str, Any]:
    return {"model_ref": getattr(engine, "model_ref", None), "dtype": _dtype(engine)}


def _dtype(engine: Any) -> str | None:
    try:
        dtype = getattr(engine, "dtype", None)
    except Exception:  # noqa: BLE001 - a property that cannot answer leaves the field empty
        return None
    return None if dtype is None else str(dtype)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def stack_entry(
    kind: str,
    prompt: str,
    identity: dict[str, Any],
    *,
    result: StackResult | None = None,
    error: BaseException | str | None = None,
    started: float,
    wall_seconds: float,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One stack run (CLI or server): its result as `to_dict()` gives it, or the error that ended it."""
    body: dict[str, Any] = result.to_dict() if result is not None else {"prompt": prompt, "answer": None, "trace": []}
    return {
        **body,
        "kind": kind,
        "request_id": request_id,
        "created": started,
        **identity,
        "error": error_text(error) if isinstance(error, BaseException) else error,
        "wall_seconds": round(wall_seconds, 4),
        "details": details or {},
    }


def generate_entry(
    prompt: str,
    identity: dict[str, Any],
    *,
    result: GenerateResult | None = None,
    error: BaseException | None = None,
    max_new_tokens: int | None = None,
    started: float,
    wall_seconds: float,
) -> dict[str, Any]:
    """One `fslm generate` call, as a one-stage trace (the stage named after the decoding mode), so listing,
    showing and the viewer treat it like a stack run."""
    trace, details = [], {}
    if result is not None:
        details = {k: v for k, v in result.to_dict().items() if k != "text"}
        capped = max_new_tokens is not None and result.tokens_out >= max_new_tokens
        trace = [
            {
                "stage": result.mode,
                "input": prompt,
                "output": result.text,
                "tokens_in": result.tokens_in,
                "tokens_out": result.tokens_out,
                "seconds": round(result.seconds, 4),
                "adapter": None,
                "finish_reason": "length" if capped else "stop",
            }
        ]
    return {
        "prompt": prompt,
        "answer": result.text if result is not None else None,
        "trace": trace,
        "tokens_in": result.tokens_in if result is not None else 0,
        "tokens_out": result.tokens_out if result is not None else 0,
        "seconds": round(result.seconds, 4) if result is not None else 0.0,
        "kind": "generate",
        "request_id": None,
        "created": started,
        "stack": None,
        "stack_path": None,
        "config_sha256": None,
        "adapters": {},
        **identity,
        "error": error_text(error) if error is not None else None,
        "wall_seconds": round(wall_seconds, 4),
        "details": details,
    }


def bounded(value: Any, max_chars: int) -> tuple[Any, bool]:
    """`value` with every string longer than `max_chars` cut there and marked, lone surrogates escaped (SQLite
    stores UTF-8); and whether anything was cut. Walks any JSON shape, so fields added later are bounded too."""
    if isinstance(value, str):
        text = printable(value)
        if len(text) <= max_chars:
            return text, False
        return text[:max_chars] + TRUNCATED.format(cut=len(text) - max_chars), True
    if isinstance(value, dict):
        out, cut = {}, False
        for key, item in value.items():
            out[str(key)], was = bounded(item, max_chars)
            cut |= was
        return out, cut
    if isinstance(value, (list, tuple)):
        items = [bounded(item, max_chars) for item in value]
        return [item for item, _ in items], any(was for _, was in items)
    return value, False


def iso_time(ts: float) -> str:
    """Unix seconds as ISO 8601 in UTC (what an export carries)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def local_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def parse_since(text: str, what: str = "--since") -> float:
    """An ISO date or date-time (a date-time without a zone is local time) as unix seconds; InputError otherwise."""
    from fslm.errors import InputError

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"{what} {text!r}: not an ISO date (e.g. 2026-12-04, 2026-12-04T18:30 or 2026-12-04T18:30+00:00)"
        ) from None
    return moment.timestamp()


def now() -> float:
    return time.time()
