"""Per-item outcomes of two systems (from `fslm eval` runs), paired item by item, with a cost per item.

Cascade and router analyses are pure functions over these pairs, so they can be recomputed from saved runs without
loading any model. Cost is "parameters x tokens processed" (a FLOPs proxy) when both runs state their parameter
count, else measured seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fslm.io as fslm_io
from fslm.errors import DataError
from fslm.evaluate.store import ITEMS, has_items, items_bytes
from fslm.io import decode_text, read_json_object
from fslm.stages.conditions import choice_margin

REQUIRED = ("id", "task", "correct")


@dataclass(frozen=True)
class Run:
    """One system's per-item rows plus what its summary says about it."""

    path: Path | None
    system: str
    rows: list[dict]
    params: int | None = None
    split: str | None = None  # the split the run was evaluated on (None: each task's eval split)

    @property
    def by_key(self) -> dict[tuple[str, str], dict]:
        return {(r["task"], r["id"]): r for r in self.rows}


@dataclass(frozen=True)
class Pair:
    """One item answered by both systems."""

    id: str
    task: str
    prompt: str
    small_correct: bool
    large_correct: bool
    small_cost: float
    large_cost: float
    signals: Mapping[str, float] = field(default_factory=dict)  # confidence signals in [0, 1] of the small answer
    extra_cost: Mapping[str, float] = field(default_factory=dict)  # cost of computing each signal (same unit)


def _params_from_summary(summary: Mapping) -> int | None:
    from fslm.models import EMBEDDED

    for key in ("params", "parameters", "params_touched"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    costs = summary.get("cost") or summary.get("costs")
    if isinstance(costs, Mapping):
        for key in ("params", "parameters", "params_touched"):
            if isinstance(costs.get(key), (int, float)) and costs[key] > 0:
                return int(costs[key])
    system = summary.get("system") or summary.get("model")
    if isinstance(system, str) and system in EMBEDDED:
        return EMBEDDED[system].params
    return None


def read_run(path: str | Path, *, system: str | None = None, params: int | None = None) -> Run:
    """Read a run folder (items.jsonl [+ summary.json]) or an items.jsonl file; errors name file and line."""
    path = Path(path)
    if not (has_items(path) if path.is_dir() else path.is_file()):
        where = path / ITEMS if path.is_dir() else path
        raise DataError(f"{where}: per-item file not found (expected the items.jsonl written by `fslm eval --out DIR`)")
    items, data = items_bytes(path)
    summary: dict = {}
    summary_path = items.parent / "summary.json"
    if summary_path.is_file():
        summary = read_json_object(summary_path)
    rows = []
    malformed = "{path}:{line}: malformed record: expected one JSON object per line ({problem})"
    # malformed lines and non-UTF-8 bytes fail naming file:line
    for lineno, row in fslm_io.iter_jsonl(items, text=decode_text(items, data), bad_line=malformed):
        if not isinstance(row, dict):
            raise DataError(f"{items}:{lineno}: malformed record: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise DataError(f"{items}:{lineno}: per-item row lacks {missing} (need at least {list(REQUIRED)})")
        rows.append(row)
    if not rows:
        raise DataError(f"{items}: no items")
    name = system or str(summary.get("system") or summary.get("model") or items.parent.name)
    split = summary.get("split")
    return Run(
        items,
        name,
        rows,
        params if params is not None else _params_from_summary(summary),
        split if isinstance(split, str) else None,
    )


def _tokens(row: Mapping) -> float:
    return float(row.get("tokens_in", 0) or 0) + float(row.get("tokens_out", 0) or 0)


def cost_unit(small: Run, large: Run) -> str:
    return "flops" if small.params and large.params else "seconds"


def row_cost(row: Mapping, run: Run, unit: str) -> float:
    """2 x params x tokens (forward FLOPs) or measured seconds for one item."""
    if unit == "flops":
        assert run.params is not None
        return 2.0 * run.params * _tokens(row)
    return float(row.get("seconds", 0.0) or 0.0)


def pair_runs(
    small: Run,
    large: Run,
    *,
    signals: Mapping[str, Mapping[tuple[str, str], float]] | None = None,
    signal_costs: Mapping[str, Mapping[tuple[str, str], float]] | None = None,
) -> list[Pair]:
    """Join two runs on (task, id); the margin signal comes from the small run's choice_scores."""
    unit = cost_unit(small, large)
    large_rows = large.by_key
    pairs = []
    for row in small.rows:
        key = (row["task"], row["id"])
        other = large_rows.get(key)
        if other is None:
            continue
        sig: dict[str, float] = {}
        if row.get("choice_scores"):
            sig["margin"] = choice_margin([float(s) for s in row["choice_scores"]])
        extra: dict[str, float] = {}
        for name, values in (signals or {}).items():
            if key in values:
                sig[name] = float(values[key])
                extra[name] = float((signal_costs or {}).get(f"{name}_{unit}", {}).get(key, 0.0))
        pairs.append(
            Pair(
                row["id"],
                row["task"],
                str(row.get("prompt", "")),
                bool(row["correct"]),
                bool(other["correct"]),
                row_cost(row, small, unit),
                row_cost(other, large, unit),
                sig,
                extra,
            )
        )
    if not pairs:
        raise DataError(
            f"the small run ({small.path}) and the large run ({large.path}) share no (task, id) items; "
            "evaluate both systems on the same tasks, split and limit"
        )
    if unit == "seconds" and sum(p.large_cost for p in pairs) <= 0:
        raise DataError("no parameter counts in the runs' summary.json and no per-item seconds: cannot compute costs")
    return pairs


def split_pairs(pairs: Iterable[Pair], fraction: float = 0.5) -> tuple[list[Pair], list[Pair]]:
    """A stable, disjoint split by a hash of the item id (calibrate on one part, report on the other)."""
    import hashlib

    first, second = [], []
    for p in pairs:
        h = int(hashlib.sha1(f"{p.task}/{p.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (first if h < fraction else second).append(p)
    return first, second
