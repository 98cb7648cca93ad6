"""`fslm eval calibrate`: does a confidence signal of an evaluated system say how often it is right, per task, and
what does rescaling fitted on held-out items make of it?

Two runs of one system: `fit` (held-out items, e.g. `fslm eval --split heldout`) and `test`. The signal is
`choice` (the softmax over a row's option log-likelihoods; confidence = its top probability), `margin` (top-1 minus
top-2 of that softmax: the cascade's and `score` stages' confidence), or a value in [0, 1] read from a signals file per
run (`fslm cascade signals`: `verify`, the small model's own P(yes) that its answer is right). Margin and file
signals are treated as probabilities of being right.
Right = the row's `correct`. Per task: a temperature T fitted on the fit run's items of that task (and one pooled over
all its tasks) and, for a probability, Platt scaling too; ECE, NLL and reliability bins on the test run's items, with
paired bootstrap CIs. A probability also gets its AUROC (no monotone rescaling changes it: whether the signal ranks
right answers above wrong ones at all) and the constant predictor "the fit items' accuracy" as the floor to beat.
The maths lives in `fslm.evaluate.calibration`; this module reads runs and assembles the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fslm.errors import DataError, InputError
from fslm.evaluate import calibration as cal

CHOICE = "choice"
MARGIN = "margin"
FROM_ROWS = (CHOICE, MARGIN)  # signals computed from a run's option scores; any other is read from a signals file
N_BOOT = 2000


def _r(x: float) -> float:
    return round(float(x), 6)


@dataclass(frozen=True)
class TaskSignal:
    """One task's items of one run: option scores + gold sets (choice), or a probability per item; and right/wrong."""

    right: np.ndarray
    scores: list[list[float]] | None = None
    gold: list[list[int]] | None = None
    probs: np.ndarray | None = None


def _gold(row: Mapping) -> list[int]:
    return [int(g) for g in row["gold_set"]] if row.get("gold_set") else [int(row["gold"])]


def _check_row(row: Mapping, run: str | Path) -> None:
    """A multiple-choice row as `fslm eval` writes it; anything else is one DataError naming the run and row."""
    where = f"{run}: row {row.get('id')!r}"
    scores = row["choice_scores"]
    if not isinstance(scores, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in scores
    ):
        raise DataError(f"{where}: 'choice_scores' must be a list of finite numbers")
    gold = row.get("gold_set") or [row.get("gold")]
    if not isinstance(gold, list) or not all(isinstance(g, int) and 0 <= g < len(scores) for g in gold):
        raise DataError(f"{where}: 'gold' / 'gold_set' must index its {len(scores)} options")
    if not isinstance(row.get("correct"), bool) or not isinstance(row.get("task"), str):
        raise DataError(f"{where}: needs a boolean 'correct' and a 'task' name")


def read_signal(run: str | Path, signal: str = CHOICE, signals: str | Path | None = None) -> dict[str, TaskSignal]:
    """Per task, a run's multiple-choice rows as a TaskSignal; with a signals file, every such row needs a value."""
    from fslm.evaluate.store import ITEMS, has_items, read_rows, read_signals

    if not Path(run).is_dir() or not has_items(Path(run)):
        raise DataError(
            f"{Path(run) / ITEMS}: per-item file not found (expected the items.jsonl of `fslm eval --out DIR`)"
        )
    rows = [r for r in read_rows(Path(run)).values() if r.get("choice_scores")]
    for r in rows:
        _check_row(r, run)
    if not rows:
        raise DataError(f"{run}: no multiple-choice rows (rows with 'choice_scores') to calibrate")
    values = None
    if signal == MARGIN:
        from fslm.stages.conditions import choice_margin

        values = {(r["task"], r["id"]): choice_margin([float(x) for x in r["choice_scores"]]) for r in rows}
    elif signal != CHOICE:
        if signals is None:
            raise InputError(
                f"signal {signal!r} is read from a signals file (`fslm cascade signals`): give one per run"
            )
        found, _ = read_signals(signals)
        if signal not in found:
            raise DataError(f"{signals}: no {signal!r} values (it has: {', '.join(sorted(found)) or 'none'})")
        values = found[signal]
        missing = [r["id"] for r in rows if (r["task"], r["id"]) not in values]
        if missing:
            raise DataError(f"{signals}: no {signal!r} value for {len(missing)} rows of {run} (first: {missing[0]!r})")
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    out = {}
    for task, task_rows in by_task.items():
        right = np.array([bool(r["correct"]) for r in task_rows])
        if values is None:
            scores = [[float(s) for s in r["choice_scores"]] for r in task_rows]
            out[task] = TaskSignal(right, scores=scores, gold=[_gold(r) for r in task_rows])
        else:
            probs = np.array([values[(r["task"], r["id"])] for r in task_rows], dtype=np.float64)
            out[task] = TaskSignal(right, probs=probs)
    return out


def _auroc_ci(p: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float | None, list[float] | None]:
    """ROC AUC (Mann-Whitney: mean ranks, ties halved) and its percentile-bootstrap 95% CI over resampled items;
    resamples with one class only are skipped. None without both classes."""
    from scipy.stats import rankdata

    if y.all() or not y.any():
        return None, None

    def auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        ranks = rankdata(scores, axis=-1)
        pos = labels.sum(axis=-1)
        neg = labels.shape[-1] - pos
        with np.errstate(divide="ignore", invalid="ignore"):
            return ((ranks * labels).sum(axis=-1) - pos * (pos + 1) / 2) / (pos * neg)

    rng, chunks = np.random.default_rng(seed), []
    for start in range(0, n_boot, 200):  # 200 resamples at a time: memory stays ~200 x items
        idx = rng.integers(0, y.size, size=(min(200, n_boot - start), y.size))
        chunks.append(auc(p[idx], y[idx].astype(np.float64)))
    boots = np.concatenate(chunks)
    boots = boots[np.isfinite(boots)]
    return float(auc(p, y.astype(np.float64))), [float(v) for v in np.quantile(boots, [0.025, 0.975])]


def _binary_nll(p: np.ndarray, y: np.ndarray) -> float:
    """Log-loss of P(right) against the outcomes: the two-option case of `calibration.nll`."""
    return cal.nll(cal.binary_scores(p), [0 if right else 1 for right in y], 1.0)


def _ece_block(before: np.ndarray, after: np.ndarray, y: np.ndarray, suffix: str, n_boot: int, seed: int) -> dict:
    boot = cal.bootstrap_ece(y, before, after, n_boot=n_boot, seed=seed)
    return {
        f"ece_after{suffix}": _r(cal.ece(after, y)),
        f"ece_after{suffix}_ci95": [_r(x) for x in boot["after_ci95"]],
        f"ece_diff{suffix}_ci95": [_r(x) for x in boot["diff_ci95"]],
        f"p_diff{suffix}_ge_0": _r(boot["p_diff_ge_0"]),
        f"reliability_after{suffix}": [b.to_dict() for b in cal.reliability(after, y)],
        "ece_before_ci95": [_r(x) for x in boot["before_ci95"]],
    }


def _choice_task(fit: TaskSignal, test: TaskSignal, t_pooled: float, n_boot: int, seed: int) -> dict:
    temp = cal.fit_temperature(fit.scores, fit.gold)
    before, pred = cal.top_confidence(test.scores, 1.0)
    after, _ = cal.top_confidence(test.scores, temp)
    y = test.right
    return {
        "temperature": _r(temp),
        "mean_conf_before": _r(before.mean()),
        "mean_conf_after": _r(after.mean()),
        "ece_before": _r(cal.ece(before, y)),
        "reliability_before": [b.to_dict() for b in cal.reliability(before, y)],
        **_ece_block(before, after, y, "", n_boot, seed),
        "ece_after_pooled_t": _r(cal.ece(cal.top_confidence(test.scores, t_pooled)[0], y)),
        "nll_before": _r(cal.nll(test.scores, test.gold, 1.0)),
        "nll_after": _r(cal.nll(test.scores, test.gold, temp)),
        "nll_after_pooled_t": _r(cal.nll(test.scores, test.gold, t_pooled)),
        "ece_fit_rate": _r(cal.ece(np.full(y.size, fit.right.mean()), y)),
        # the row's own `correct` against the argmax of its scores: 0 unless a row was scored another way
        "rows_where_correct_differs_from_argmax": int(
            np.sum(y != np.array([p in set(g) for p, g in zip(pred, test.gold, strict=True)]))
        ),
    }


def _binary_task(
    fit: TaskSignal, test: TaskSignal, pooled: tuple[float, tuple[float, float]], n_boot: int, seed: int
) -> dict:
    temp, (a, b) = cal.fit_binary_temperature(fit.probs, fit.right), cal.fit_platt(fit.probs, fit.right)
    p, y = test.probs, test.right
    after, platt = cal.scale_binary(p, temp), cal.scale_platt(p, a, b)
    rate = np.full(y.size, fit.right.mean())
    auc, auc_ci = _auroc_ci(p, y, n_boot, seed)
    return {
        "temperature": _r(temp),
        "platt": [_r(a), _r(b)],
        "mean_conf_before": _r(p.mean()),
        "mean_conf_after": _r(after.mean()),
        "auroc": None if auc is None else _r(auc),
        "auroc_ci95": None if auc_ci is None else [_r(x) for x in auc_ci],
        "ece_before": _r(cal.ece(p, y)),
        "reliability_before": [b.to_dict() for b in cal.reliability(p, y)],
        **_ece_block(p, after, y, "", n_boot, seed),
        **_ece_block(p, platt, y, "_platt", n_boot, seed),
        "ece_after_pooled_t": _r(cal.ece(cal.scale_binary(p, pooled[0]), y)),
        "ece_after_pooled_platt": _r(cal.ece(cal.scale_platt(p, *pooled[1]), y)),
        "ece_fit_rate": _r(cal.ece(rate, y)),
        "nll_before": _r(_binary_nll(p, y)),
        "nll_after": _r(_binary_nll(after, y)),
        "nll_after_platt": _r(_binary_nll(platt, y)),
        "nll_after_pooled_t": _r(_binary_nll(cal.scale_binary(p, pooled[0]), y)),
        "nll_fit_rate": _r(_binary_nll(rate, y)),
    }


def calibrate_runs(
    fit: str | Path,
    test: str | Path,
    *,
    signal: str = CHOICE,
    fit_signals: str | Path | None = None,
    signals: str | Path | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """The calibration report of `signal` for the tasks both runs have (fit on `fit`, measured on `test`)."""
    if signal in FROM_ROWS and (fit_signals is not None or signals is not None):
        raise InputError(f"signal {signal!r} comes from the runs' option scores: no signals files")
    fit_by, test_by = read_signal(fit, signal, fit_signals), read_signal(test, signal, signals)
    tasks = [t for t in test_by if t in fit_by]
    if not tasks:
        raise DataError(f"{fit} and {test} share no multiple-choice task")
    binary = signal != CHOICE
    if binary:
        p = np.concatenate([fit_by[t].probs for t in tasks])
        y = np.concatenate([fit_by[t].right for t in tasks])
        pooled = (cal.fit_binary_temperature(p, y), cal.fit_platt(p, y))
    else:
        pooled_t = cal.fit_temperature(
            [s for t in tasks for s in fit_by[t].scores], [g for t in tasks for g in fit_by[t].gold]
        )
    report: dict = {
        "signal": signal,
        "fit": str(fit),
        "test": str(test),
        "fit_signals": None if fit_signals is None else str(fit_signals),
        "signals": None if signals is None else str(signals),
        "n_bins": cal.DEFAULT_BINS,
        "t_pooled": _r(pooled[0] if binary else pooled_t),
        "tasks": {},
    }
    if binary:
        report["platt_pooled"] = [_r(x) for x in pooled[1]]
    for task in tasks:
        f, t = fit_by[task], test_by[task]
        entry = {"n_fit": int(f.right.size), "n_test": int(t.right.size), "acc": _r(t.right.mean())}
        if binary:
            entry |= _binary_task(f, t, pooled, n_boot, seed)
        else:
            entry |= _choice_task(f, t, pooled_t, n_boot, seed)
        report["tasks"][task] = entry
    report |= _means(report["tasks"].values())
    report["skipped_tasks"] = sorted(set(fit_by) ^ set(test_by))
    return report


def _means(entries: Sequence[dict] | object) -> dict:
    entries = list(entries)
    out = {}
    for key in entries[0]:
        values = [e[key] for e in entries]
        if key.startswith(("ece_", "nll_", "auroc")) and all(isinstance(v, float) for v in values):
            out[f"mean_{key}"] = _r(np.mean(values))
    for kind in ("", "_platt"):
        if f"ece_diff{kind}_ci95" in entries[0]:
            out[f"tasks_ece_lower{kind}"] = sum(e[f"ece_diff{kind}_ci95"][1] < 0 for e in entries)
            out[f"tasks_ece_higher{kind}"] = sum(e[f"ece_diff{kind}_ci95"][0] > 0 for e in entries)
    if "nll_fit_rate" in entries[0] and "nll_after_platt" in entries[0]:
        out["tasks_platt_nll_below_fit_rate"] = sum(e["nll_after_platt"] < e["nll_fit_rate"] for e in entries)
    if "auroc_ci95" in entries[0]:
        out["tasks_auroc_above_half"] = sum(bool(e["auroc_ci95"]) and e["auroc_ci95"][0] > 0.5 for e in entries)
        out["tasks_auroc_below_half"] = sum(bool(e["auroc_ci95"]) and e["auroc_ci95"][1] < 0.5 for e in entries)
    return out


def _ci(pair: Sequence[float] | None) -> str:
    return "–" if not pair else f"{pair[0]:.3f}–{pair[1]:.3f}"


def _diff(pair: Sequence[float]) -> str:
    return f"{pair[0]:+.3f} to {pair[1]:+.3f}"


def calibration_markdown(report: dict) -> str:
    """The report as a markdown table per task plus a line of means."""
    binary = "platt_pooled" in report
    lines = [
        f"# Calibration of `{report['signal']}`: fit on `{report['fit']}`, measured on `{report['test']}`",
        "",
        f"ECE over {report['n_bins']} equal-width bins; 95% CIs: paired bootstrap over the test items. T (and, for a "
        "probability, Platt a, b) fitted per task on the fit items. T > 1: the raw signal was overconfident.",
        "",
    ]
    if binary:
        lines += [
            "| task | n fit / test | acc % | mean conf % | AUROC | 95% CI | T | ECE before | after T | Δ 95% CI "
            "| after Platt | Δ 95% CI | ECE of fit rate | NLL before → T → Platt → fit rate |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|---:|---|",
        ]
    else:
        lines += [
            "| task | n fit / test | acc % | mean conf % | T | ECE before | 95% CI | ECE after | 95% CI | Δ 95% CI "
            "| NLL before → after |",
            "|---|---|---:|---:|---:|---:|---|---:|---|---|---|",
        ]
    for task, e in report["tasks"].items():
        head = f"| {task} | {e['n_fit']} / {e['n_test']} | {100 * e['acc']:.1f} | {100 * e['mean_conf_before']:.1f} |"
        if binary:
            auc = "–" if e["auroc"] is None else f"{e['auroc']:.3f}"
            lines.append(
                f"{head} {auc} | {_ci(e['auroc_ci95'])} | {e['temperature']:.2f} | {e['ece_before']:.3f} | "
                f"{e['ece_after']:.3f} | {_diff(e['ece_diff_ci95'])} | {e['ece_after_platt']:.3f} | "
                f"{_diff(e['ece_diff_platt_ci95'])} | {e['ece_fit_rate']:.3f} | {e['nll_before']:.3f} → "
                f"{e['nll_after']:.3f} → {e['nll_after_platt']:.3f} → {e['nll_fit_rate']:.3f} |"
            )
        else:
            lines.append(
                f"{head} {e['temperature']:.2f} | {e['ece_before']:.3f} | {_ci(e['ece_before_ci95'])} | "
                f"{e['ece_after']:.3f} | {_ci(e['ece_after_ci95'])} | {_diff(e['ece_diff_ci95'])} | "
                f"{e['nll_before']:.3f} → {e['nll_after']:.3f} |"
            )
    n = len(report["tasks"])
    means = (
        f"Means over {n} tasks: ECE {report['mean_ece_before']:.3f} before, {report['mean_ece_after']:.3f} after "
        f"per-task T (lower on {report['tasks_ece_lower']}, higher on {report['tasks_ece_higher']} tasks with the CI "
        f"excluding 0), {report['mean_ece_after_pooled_t']:.3f} with one T pooled over the tasks "
        f"({report['t_pooled']:.2f})"
    )
    if binary:
        a, b = report["platt_pooled"]
        means += (
            f"; {report['mean_ece_after_platt']:.3f} after per-task Platt (lower on {report['tasks_ece_lower_platt']}, "
            f"higher on {report['tasks_ece_higher_platt']}), {report['mean_ece_after_pooled_platt']:.3f} pooled "
            f"(a {a:.2f}, b {b:.2f})"
        )
    means += f"; the fit items' accuracy as a constant confidence: {report['mean_ece_fit_rate']:.3f}"
    if binary:
        means += (
            f". NLL (lower = more information about each item): {report['mean_nll_before']:.3f} before, "
            f"{report['mean_nll_after']:.3f} after T, {report['mean_nll_after_platt']:.3f} after Platt, "
            f"{report['mean_nll_fit_rate']:.3f} for the fit rate (Platt below it on "
            f"{report['tasks_platt_nll_below_fit_rate']} tasks)"
        )
    if binary and "mean_auroc" in report:
        means += (
            f". AUROC: mean {report['mean_auroc']:.3f}, CI above 0.5 on "
            f"{report['tasks_auroc_above_half']} tasks, below on {report['tasks_auroc_below_half']}"
        )
    elif binary:
        means += ". AUROC: undefined on some task (its test answers all right or all wrong)"
    lines += ["", means + "."]
    if report["skipped_tasks"]:
        lines += ["", f"Tasks in only one run (left out): {', '.join(report['skipped_tasks'])}."]
    return "\n".join(lines) + "\n"


def reliability_panels(report: dict) -> dict:
    """{panel title: {curve: bins}} per task, for `calibration.reliability_plot`."""
    panels = {}
    for task, e in report["tasks"].items():
        curves = {"before": e["reliability_before"], "temperature": e["reliability_after"]}
        if "reliability_after_platt" in e:
            curves["Platt"] = e["reliability_after_platt"]
        auroc = "" if e.get("auroc") is None else f", AUROC {e['auroc']:.2f}"
        title = f"{task} (T {e['temperature']:.2f}{auroc})"
        panels[title] = {label: [cal.Bin(**b) for b in bins] for label, bins in curves.items()}
    return panels


def write_calibration(report: dict, out_dir: str | Path) -> Path:
    """calibration.json, calibration.md and calibration.png (reliability diagrams per task) in `out_dir`."""
    from fslm.io import write_atomic, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "calibration.json", report)
    write_atomic(out / "calibration.md", calibration_markdown(report))
    title = f"{report['signal']}: test items, rescaling fitted on the fit items"
    write_atomic(out / "calibration.png", cal.reliability_plot(reliability_panels(report), title=title))
    return out
