"""Logging runs: `record` (never raises: what runs call), `logged_run` and `logged_generate`.

A run must never fail because of its log: `record` turns any problem (a lock held past the busy timeout, a corrupt
or read-only file, a bug in building the entry) into one `note:` line on stderr per log file and process, and the
run goes on unlogged.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fslm.logs.entries import engine_identity, generate_entry, stack_entry, stack_identity
from fslm.logs.store import RunLog
from fslm.settings import get_settings

if TYPE_CHECKING:
    from fslm.collaborate.generate import GenerateResult
    from fslm.stack import Stack, StackResult

_noted: set[str] = set()


def record(
    entry: dict[str, Any] | Callable[[], dict[str, Any]], *, enabled: bool = True, log: RunLog | None = None
) -> int | None:
    """Append `entry` (or what calling it returns: building it can fail too) to the run log; its id, or None when
    logging is off (here, or FSLM_LOG=0) or the log could not take it, which is said once on stderr."""
    where = "the run log"
    try:
        if not enabled or not get_settings().log:
            return None
        target = log or RunLog()
        where = str(target.path)
        return target.add(entry() if callable(entry) else entry)
    except Exception as err:  # noqa: BLE001 - whatever goes wrong, the run it describes goes on
        note_once(where, problem(err))
        return None


def problem(err: BaseException) -> str:
    """A log problem in words a user can act on."""
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) and "locked" in text:
        return "locked by another process for longer than a write waits"
    if isinstance(err, sqlite3.DatabaseError) and "not a database" in text:
        return "not an SQLite database (corrupt?); move it away or delete it"
    if "readonly" in text or isinstance(err, PermissionError):
        return "read-only, or in a folder that cannot be written"
    if isinstance(err, OSError):
        return err.strerror or text
    return text or type(err).__name__


def note_once(where: str, message: str) -> None:
    if where in _noted:
        return
    _noted.add(where)
    try:
        sys.stderr.write(f"note: not logging to {where}: {message} (said once; FSLM_LOG=0 turns the log off)\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stderr is no reason to fail either
        pass


def logged_run(stack: Stack, prompt: str, *, log: bool = True, kind: str = "run") -> StackResult:
    """`stack.run(prompt)`, logged with its result or the error that ended it (then re-raised). `log=False` (and
    FSLM_LOG=0) leave the log alone; the log never changes what the run returns or raises."""
    started, t0 = time.time(), time.perf_counter()
    try:
        result = stack.run(prompt)
    except Exception as err:
        failed = err
        record(
            lambda: stack_entry(
                kind,
                prompt,
                stack_identity(stack),
                error=failed,
                started=started,
                wall_seconds=time.perf_counter() - t0,
            ),
            enabled=log,
        )
        raise
    record(
        lambda: stack_entry(
            kind,
            result.prompt,
            stack_identity(stack),
            result=result,
            started=started,
            wall_seconds=time.perf_counter() - t0,
        ),
        enabled=log,
    )
    return result


def logged_generate(prompt: str, *, log: bool = True, **options: Any) -> GenerateResult:
    """`fslm.collaborate.generate.generate(prompt, **options)`, logged like `logged_run`. The target engine is
    loaded here (as generate would load it) so the entry can name its model reference and dtype."""
    from fslm.collaborate.generate import generate
    from fslm.engine import load_engine
    from fslm.models import DEFAULT_MODEL

    model = options.setdefault("model", DEFAULT_MODEL)
    engines = dict(options.pop("engines", None) or {})
    if model not in engines:
        engines[model] = load_engine(model, dtype=options.get("dtype", "float32"), backend=options.get("backend", "hf"))
    identity = {"engine": engine_identity(engines[model])}
    started, t0 = time.time(), time.perf_counter()

    def entry(result: GenerateResult | None = None, error: BaseException | None = None) -> dict[str, Any]:
        return generate_entry(
            prompt,
            identity,
            result=result,
            error=error,
            max_new_tokens=options.get("max_new_tokens", 128),
            started=started,
            wall_seconds=time.perf_counter() - t0,
        )

    try:
        result = generate(prompt, engines=engines, **options)
    except Exception as err:
        failed = err
        record(lambda: entry(error=failed), enabled=log)
        raise
    record(lambda: entry(result), enabled=log)
    return result
