"""Bootstrap confidence intervals: per task, macro average, and paired differences between two runs.

Percentile bootstrap with a fixed seed, so the same items always give the same interval. Resamples are drawn in
chunks to keep memory flat for large tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

N_BOOT = 10_000
SEED = 0
_CHUNK = 500


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot means of resamples (with replacement) of the rows of `values` (1-D, or 2-D paired columns)."""
    n = len(values)
    out = np.empty((n_boot,) + values.shape[1:], dtype=np.float64)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        out[start : start + size] = values[idx].mean(axis=1)
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = SEED, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of per-item scores (0/1 accuracies or mc2 masses)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    return _interval(_boot_means(arr, n_boot, np.random.default_rng(seed)), confidence)


def macro_bootstrap_ci(
    per_task: Mapping[str, Sequence[float]], *, n_boot: int = N_BOOT, seed: int = SEED, confidence: float = 0.95
) -> tuple[float, float]:
    """CI of the unweighted mean over tasks: each task resampled independently, then averaged per replicate."""
    tasks = [np.asarray(v, dtype=np.float64) for v in per_task.values() if len(v)]
    if not tasks:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    reps = np.mean([_boot_means(v, n_boot, rng) for v in tasks], axis=0)
    return _interval(reps, confidence)


def paired_bootstrap(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    confidence: float = 0.95,
    leave_one_out: bool = False,
) -> dict[str, dict]:
    """Paired bootstrap of mean(a) - mean(b) per task (items aligned by position) and for the macro average.

    Resampling the same item indices for both runs keeps the pairing, so the interval reflects the per-item
    disagreement of the two systems rather than the (much larger) spread of item difficulty.
    Returns {task: {n, a, b, diff, ci95, p_le_0}} plus a "macro" entry. leave_one_out: also "macro_without" =
    {task: the macro entry over every other task}, from the same replicates (so it is the macro's own CI with that
    task taken out), for three tasks or more: does a macro verdict rest on one task?
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    task_reps: dict[str, np.ndarray] = {}
    for task in a:
        va, vb = np.asarray(a[task], dtype=np.float64), np.asarray(b[task], dtype=np.float64)
        if va.shape != vb.shape:
            raise ValueError(f"{task}: {va.size} items in A but {vb.size} in B; align them first")
        if va.size == 0:
            continue
        task_reps[task] = _boot_means(va - vb, n_boot, rng)
        out[task] = _diff_entry(int(va.size), float(va.mean()), float(vb.mean()), task_reps[task], confidence)
    if task_reps:
        out["macro"] = _macro_entry(out, task_reps, list(task_reps), confidence)
    if leave_one_out and len(task_reps) >= 3:
        out["macro_without"] = {
            t: _macro_entry(out, task_reps, [k for k in task_reps if k != t], confidence) for t in task_reps
        }
    return out


def _macro_entry(entries: dict, task_reps: dict[str, np.ndarray], tasks: list[str], confidence: float) -> dict:
    reps = np.mean([task_reps[t] for t in tasks], axis=0)
    ma = float(np.mean([entries[t]["a"] for t in tasks]))
    mb = float(np.mean([entries[t]["b"] for t in tasks]))
    return _diff_entry(sum(int(entries[t]["n"]) for t in tasks), ma, mb, reps, confidence)


def _diff_entry(n: int, mean_a: float, mean_b: float, reps: np.ndarray, confidence: float) -> dict:
    lo, hi = _interval(reps, confidence)
    return {
        "n": n,
        "a": mean_a,
        "b": mean_b,
        "diff": mean_a - mean_b,
        "ci95": [lo, hi],
        # share of bootstrap replicates where A is not better: a one-sided bootstrap p-value for "A > B"
        "p_le_0": float(np.mean(reps <= 0.0)),
    }


def group_bootstrap(
    groups: Sequence[object],
    statistics: Callable[[np.ndarray], Mapping[str, float]],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap CIs of statistics over items that come in groups (the answers of one question): whole
    groups are resampled with replacement, so items of one group never count as independent evidence.

    `groups[i]` is item i's group; `statistics(idx)` gets the resampled item indices (repeats allowed) and returns
    named values. Every statistic uses the same resamples, so differences between them are paired. A replicate whose
    value is nan (e.g. an AUROC without both classes) is left out of that statistic's interval."""
    if len(groups) == 0:
        return {}
    ids: dict[object, int] = {}
    member_of = np.asarray([ids.setdefault(g, len(ids)) for g in groups], dtype=np.int64)
    order = np.argsort(member_of, kind="stable")  # items of group 0, then of group 1, ...
    sizes = np.bincount(member_of)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        chosen = rng.integers(0, sizes.size, size=sizes.size)
        lens = sizes[chosen]
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        idx = order[np.repeat(starts[chosen], lens) + offsets]
        for name, value in statistics(idx).items():
            values.setdefault(name, []).append(float(value))
    out = {}
    for name, vals in values.items():
        arr = np.asarray(vals)
        arr = arr[~np.isnan(arr)]
        out[name] = _interval(arr, confidence) if arr.size else (float("nan"), float("nan"))
    return out


def gap_recovered(
    weak: Mapping[str, Sequence[float]],
    strong: Mapping[str, Sequence[float]],
    ceiling: Mapping[str, Sequence[float]],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    confidence: float = 0.95,
) -> dict[str, dict]:
    """Performance gap recovered (Burns et al., 2023), per task and macro, with percentile-bootstrap CIs:
    PGR = (acc(strong) - acc(weak)) / (acc(ceiling) - acc(weak)); 0 is the weak system's accuracy, 1 the ceiling's.

    Per-item scores are aligned by position, and within a task every replicate draws the same item indices for all
    three runs (as `paired_bootstrap` does), so the intervals reflect how the three disagree on items. The macro
    replicate averages each system's task replicates, like `macro_bootstrap_ci`: macro PGR is the ratio of macro
    accuracies, not the mean of per-task ratios (one task with a near-zero gap would swamp that).

    The ratio means nothing when its denominator, the gap (ceiling - weak), may be 0, so each entry carries the gap
    with its CI and `defined` (the gap's CI lies above 0). Replicates whose gap is not positive are left out of PGR's
    interval (its share of kept replicates is `gap_positive`); `pgr` is None when the observed gap is not positive,
    `pgr_ci95` when no replicate has one. Returns {task: {n, weak, strong, ceiling, gap, gap_ci95, pgr, pgr_ci95,
    gap_positive, defined}} plus a "macro" entry.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    task_reps: list[np.ndarray] = []
    points: list[np.ndarray] = []
    for task in weak:
        if task not in strong or task not in ceiling:
            raise ValueError(f"{task}: scored for the weak system only; give all three runs the same tasks")
        w, s, c = (np.asarray(x[task], dtype=np.float64) for x in (weak, strong, ceiling))
        if not w.shape == s.shape == c.shape:
            raise ValueError(
                f"{task}: {w.size}, {s.size} and {c.size} items in weak, strong, ceiling; align them first"
            )
        if w.size == 0:
            continue
        # columns: weak, strong - weak, ceiling - weak (per-item differences: identical runs give exactly 0)
        cols = np.stack([w, s - w, c - w], axis=1)
        task_reps.append(_boot_means(cols, n_boot, rng))
        points.append(cols.mean(axis=0))
        out[task] = _gap_entry(int(w.size), points[-1], task_reps[-1], confidence)
    if task_reps:
        n = sum(int(e["n"]) for e in out.values())
        out["macro"] = _gap_entry(n, np.mean(points, axis=0), np.mean(task_reps, axis=0), confidence)
    return out


def _gap_entry(n: int, point: np.ndarray, reps: np.ndarray, confidence: float) -> dict:
    """point: (weak, strong - weak, ceiling - weak) means; reps: the same per bootstrap replicate."""
    acc_weak, lift, gap = (float(x) for x in point)
    gap_lo, gap_hi = _interval(reps[:, 2], confidence)
    positive = reps[:, 2] > 0.0
    ratios = reps[positive, 1] / reps[positive, 2]
    return {
        "n": n,
        "weak": acc_weak,
        "strong": acc_weak + lift,
        "ceiling": acc_weak + gap,
        "gap": gap,
        "gap_ci95": [gap_lo, gap_hi],
        "pgr": lift / gap if gap > 0.0 else None,
        "pgr_ci95": list(_interval(ratios, confidence)) if ratios.size else None,
        "gap_positive": float(positive.mean()),
        "defined": bool(gap > 0.0 and gap_lo > 0.0),
    }
