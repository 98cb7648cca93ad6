"""The run log: every `fslm run`, `fslm generate` and `fslm serve` request in one SQLite file, browsed with `fslm logs`
and the server's /ui viewer. docs/logs.md describes the file, its schema and its guarantees.

Python twins of the CLI:
    log_path()                                   fslm logs path
    list_runs(limit, offset, since=)             fslm logs [list] -n N
    get_run(id)                                  fslm logs show ID
    search_runs(text, limit)                     fslm logs search TEXT
    export_runs(out, since=)                     fslm logs export --jsonl [--since DATE] [--out FILE]
    remove_runs([id, ...])                       fslm logs rm ID...
    prune_runs(older_than_days=, keep=)          fslm logs prune --older-than DAYS / --keep N
Logging a run from Python: `logged_run(stack, prompt)` instead of `stack.run(prompt)`, or `record(entry)`.
"""

from fslm.logs.db import SCHEMA_VERSION, LogError
from fslm.logs.entries import generate_entry, parse_since, stack_entry, stack_identity
from fslm.logs.recording import logged_generate, logged_run, record
from fslm.logs.store import (
    RunLog,
    export_runs,
    get_run,
    list_runs,
    log_path,
    prune_runs,
    remove_runs,
    search_runs,
)

__all__ = [
    "SCHEMA_VERSION",
    "LogError",
    "RunLog",
    "export_runs",
    "generate_entry",
    "get_run",
    "list_runs",
    "log_path",
    "logged_generate",
    "logged_run",
    "parse_since",
    "prune_runs",
    "record",
    "remove_runs",
    "search_runs",
    "stack_entry",
    "stack_identity",
]
