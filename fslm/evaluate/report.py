"""Summary, markdown table and bar chart of one run (all derived from its per-item rows)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from fslm.evaluate.scoring import metric_name
from fslm.evaluate.stats import bootstrap_ci, macro_bootstrap_ci
from fslm.io import write_atomic, write_json

SUMMARY, TABLE, CHART = "summary.json", "table.md", "chart.png"
ITEM_METRICS = "item_metrics.json"  # per-item text-metric values, what a paired comparison of two runs resamples


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _r(x: float, nd: int = 6) -> float | None:
    """Accuracies keep 6 digits: a table rounds them again to 0.1 points, and 4 digits made that a double rounding
    (a macro of 0.314545 stored as 0.3145 printed 31.4 where the paired comparison, from the items, printed 31.5)."""
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def build_summary(
    system,
    plan: Mapping[str, Sequence],
    rows: Sequence[dict],
    sessions: Sequence[dict],
    *,
    notes: Sequence[str] = (),
    limit: int | None = None,
    num_fewshot: int = 0,
    split: str | None = None,
    metrics: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> dict:
    """summary.json content: per-task n/acc/acc_norm/ci95 and costs, macro accuracy with its CI, run costs.
    `metrics` ({task: {name: per-item values}}, from `fslm eval --metrics`) adds each task's
    "metrics": {name: {"mean", "ci95"}} (percentile bootstrap over its items, as acc)."""
    by_task: dict[str, list[dict]] = {task: [] for task in plan}
    for row in rows:
        by_task[row["task"]].append(row)
    tasks, accs = {}, {}
    for task, task_rows in by_task.items():
        values = [float(r["acc"]) for r in task_rows]
        accs[task] = values
        norms = [r["acc_norm"] for r in task_rows]
        has_norm = bool(norms) and all(v is not None for v in norms)
        lo, hi = bootstrap_ci(values)
        entry = {
            "n": len(task_rows),
            "metric": metric_name(task),
            "acc": _r(_mean(values)),
            "acc_norm": _r(_mean([float(v) for v in norms])) if has_norm else None,
            "ci95": [_r(lo), _r(hi)],
            "acc_norm_ci95": [_r(x) for x in bootstrap_ci([float(v) for v in norms])] if has_norm else None,
            "tokens_in_per_item": _r(_mean([r["tokens_in"] for r in task_rows]), 1),
            "tokens_out_per_item": _r(_mean([r["tokens_out"] for r in task_rows]), 2),
            "seconds_per_item": _r(_mean([r["seconds"] for r in task_rows]), 4),
        }
        if metrics and metrics.get(task):
            entry["metrics"] = {
                name: {"mean": _r(_mean(list(vals))), "ci95": [_r(x) for x in bootstrap_ci(list(vals))]}
                for name, vals in metrics[task].items()
            }
        tasks[task] = entry
    macro = _mean([_mean(v) for v in accs.values() if v])
    mlo, mhi = macro_bootstrap_ci(accs)
    n_rows = max(len(rows), 1)
    described = system.describe()
    cost = {
        "params_touched": described["params_touched"],
        "tokens_in_per_item": _r(sum(r["tokens_in"] for r in rows) / n_rows, 1),
        "generated_tokens_per_item": _r(sum(r["tokens_out"] for r in rows) / n_rows, 2),
        "seconds_per_item": _r(sum(r["seconds"] for r in rows) / n_rows, 4),
        "item_seconds_total": _r(sum(r["seconds"] for r in rows), 1),
        "wall_seconds": _r(sum(s.get("wall_seconds", 0.0) for s in sessions), 1),
        "cpu_seconds": _r(sum(s.get("cpu_seconds", 0.0) for s in sessions), 1),
        "load_seconds": _r(max((s.get("load_seconds", 0.0) for s in sessions), default=0.0), 2),
        "peak_rss_mb": _r(max((s.get("peak_rss_mb", 0.0) for s in sessions), default=0.0), 1),
        "sessions": len(sessions),
    }
    return {
        "system": system.name,
        **{k: v for k, v in described.items() if k != "params_touched"},
        "params_touched": described["params_touched"],
        "num_fewshot": num_fewshot,
        "split": split,
        "limit": limit,
        "tasks": tasks,
        "macro_acc": _r(macro),
        "macro_ci95": [_r(mlo), _r(mhi)],
        "n_items": len(rows),
        "cost": cost,
        "notes": list(notes),
        "sessions": list(sessions),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.1f}" if pct else f"{x:g}"


def table_markdown(summary: Mapping) -> str:
    """A markdown table: one row per task (accuracy in %, 95% CI, acc_norm, costs) plus the macro average."""
    cost = summary["cost"]
    lines = [
        f"# {summary['system']}",
        "",
        f"{summary.get('num_fewshot', 0)}-shot, split {summary.get('split') or 'default'}, "
        f"{summary['n_items']} items; parameters touched {summary['params_touched']:,}; "
        f"wall {cost['wall_seconds']} s (CPU {cost.get('cpu_seconds')} s; model load {cost['load_seconds']} s); "
        f"peak RSS {cost['peak_rss_mb']} MB.",
        "",
        "| task | metric | n | acc % | 95% CI | acc_norm % | tokens in/item | generated tokens/item | s/item |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for task, t in summary["tasks"].items():
        lo, hi = t["ci95"]
        lines.append(
            f"| {task} | {t['metric']} | {t['n']} | {_fmt(t['acc'])} | {_fmt(lo)}–{_fmt(hi)} | {_fmt(t['acc_norm'])} | "
            f"{t['tokens_in_per_item']} | {t['tokens_out_per_item']} | {t['seconds_per_item']} |"
        )
    mlo, mhi = summary["macro_ci95"]
    lines.append(
        f"| **macro** | acc | {summary['n_items']} | **{_fmt(summary['macro_acc'])}** | {_fmt(mlo)}–{_fmt(mhi)} | — | "
        f"{cost['tokens_in_per_item']} | {cost['generated_tokens_per_item']} | {cost['seconds_per_item']} |"
    )
    loads = [
        f"{s['loadavg_start'][0]}→{s['loadavg_end'][0]}"
        for s in summary.get("sessions", [])
        if s.get("items_evaluated")
    ]
    if loads:
        lines.append(
            f"\nMachine load (1-min load average at start→end of each session that evaluated items, "
            f"{summary['sessions'][-1].get('cpu_count')} cores, shared with other jobs): {', '.join(loads)}."
        )
    scored = {task: t["metrics"] for task, t in summary["tasks"].items() if t.get("metrics")}
    if scored:
        lines += ["", "| task | metric | n | mean % | 95% CI |", "|---|---|---:|---:|---|"]
        for task, entries in scored.items():
            for name, m in entries.items():
                lo, hi = m["ci95"]
                n = summary["tasks"][task]["n"]
                lines.append(f"| {task} | {name} | {n} | {_fmt(m['mean'])} | {_fmt(lo)}–{_fmt(hi)} |")
    for note in summary.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def chart_png(summary: Mapping) -> bytes:
    """Bars of per-task accuracy (and the macro average) with 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["tasks"]) + ["macro"]
    accs = [summary["tasks"][t]["acc"] for t in summary["tasks"]] + [summary["macro_acc"]]
    cis = [summary["tasks"][t]["ci95"] for t in summary["tasks"]] + [summary["macro_ci95"]]
    vals = [100 * (a or 0.0) for a in accs]
    low = [max(0.0, v - 100 * (c[0] if c[0] is not None else v / 100)) for v, c in zip(vals, cis)]
    high = [max(0.0, 100 * (c[1] if c[1] is not None else v / 100) - v) for v, c in zip(vals, cis)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.2))
    colors = ["#4C72B0"] * (len(names) - 1) + ["#DD8452"]
    ax.bar(names, vals, yerr=[low, high], capsize=4, color=colors, edgecolor="black", linewidth=0.5)
    for i, v in enumerate(vals):
        ax.text(i, v + high[i] + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("accuracy % (95% bootstrap CI)")
    ax.set_ylim(0, min(100, max(v + h for v, h in zip(vals, high)) + 10))
    ax.set_title(f"{summary['system']} — {summary['n_items']} items", fontsize=10)
    ax.tick_params(axis="x", labelrotation=35, labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(
    folder: Path,
    summary: Mapping,
    rows: Sequence[dict] = (),
    metrics: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> None:
    """summary.json, table.md, chart.png; with `metrics` (per-item values of `rows`' generation tasks, in row order)
    also item_metrics.json, which a run without metrics removes (it would describe another summary)."""
    write_json(folder / SUMMARY, summary)
    write_atomic(folder / TABLE, table_markdown(summary))
    write_atomic(folder / CHART, chart_png(summary))
    if metrics:
        tasks = {
            task: {"ids": [r["id"] for r in rows if r["task"] == task], "values": {n: list(v) for n, v in m.items()}}
            for task, m in metrics.items()
        }
        write_json(folder / ITEM_METRICS, {"tasks": tasks})
    else:
        (folder / ITEM_METRICS).unlink(missing_ok=True)
