"""RESULTS.md, results.json and pareto.png of an experiment, written from its run folders (see results.py).

Files are rewritten only when their content changes, so a rerun of a finished experiment leaves them untouched.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from fslm.experiment.plan import DONE, Plan
from fslm.experiment.results import gather
from fslm.experiment.spec import ExperimentSpec
from fslm.io import read_text, write_atomic

RESULTS_JSON, PARETO = "results.json", "pareto.png"
MAX_TRACE_CHARS = 600


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(ci: list | None) -> str:
    return "—" if not ci or ci[0] is None else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def frontier(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names on the Pareto frontier of (seconds per item, accuracy): no other point is at least as fast and as
    accurate and better in one of the two. Sorted by cost."""
    names = []
    for name, (cost, acc) in points.items():
        dominated = any(
            c <= cost and a >= acc and (c < cost or a > acc) for other, (c, a) in points.items() if other != name
        )
        if not dominated:
            names.append(name)
    return sorted(names, key=lambda n: points[n][0])


def pareto_png(results: dict) -> bytes | None:
    """Macro accuracy against seconds per item, one labelled point per finished system, the frontier joined."""
    points = {
        name: (max(e["seconds_per_item"], 1e-6), e["macro_acc"])
        for name, e in results["systems"].items()
        if e.get("macro_acc") is not None
    }
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = frontier(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, (cost, acc) in points.items():
        on = name in best
        ax.scatter(cost, 100 * acc, s=36, color="#DD8452" if on else "#4C72B0", edgecolor="black", linewidth=0.5)
        ax.annotate(name, (cost, 100 * acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([points[n][0] for n in best], [100 * points[n][1] for n in best], color="#DD8452", linewidth=1, zorder=0)
    costs = [c for c, _ in points.values()]
    if max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("seconds per item (this machine)")
    ax.set_ylabel("macro accuracy %")
    ax.set_title(f"{results['name']}: accuracy vs cost ({results['items_per_system']} items per system)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _systems_table(results: dict) -> list[str]:
    tasks = results["evaluation"]["tasks"]
    head = ["system", "what", "macro %", "95% CI", *tasks, "s/item", "CPU s/item", "tokens in/item"]
    head += ["gen. tokens/item", "params"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|---|" + "---:|" * (len(tasks) + 5)]
    for name, e in results["systems"].items():
        if e.get("macro_acc") is None:
            lines.append(f"| {name} | {e['label']} | {e.get('progress', 'not run')} |" + " |" * (len(head) - 3))
            continue
        cells = [
            name,
            e["label"],
            f"**{_pct(e['macro_acc'])}**",
            _ci(e["macro_ci95"]),
            *[_pct(e["tasks"][t]["acc"]) for t in tasks],
            f"{e['seconds_per_item']:g}",
            "" if e.get("cpu_seconds_per_item") is None else f"{e['cpu_seconds_per_item']:g}",
            f"{e['tokens_in_per_item']:g}",
            f"{e['generated_tokens_per_item']:g}",
            f"{e['params_touched']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metrics_table(results: dict) -> list[str]:
    """Each finished system's mean per text metric on each generation task, with its 95% bootstrap CI."""
    rows = [
        f"| {name} | {task} | {metric} | {e['tasks'][task]['n']} | {_pct(m['mean'])} | {_ci(m['ci95'])} |"
        for name, e in results["systems"].items()
        for task, per_metric in (e.get("metrics") or {}).items()
        for metric, m in per_metric.items()
    ]
    if not rows:
        return []
    return [
        "## Text metrics (generation tasks)",
        "",
        "Each generation compared with the task's reference text (`fslm.evaluate.metrics`; GSM8K: the worked "
        "solution, alpaca: the reference output); mean in points of 100, percentile bootstrap 95% CI over items.",
        "",
        "| system | task | metric | n | mean | 95% CI |",
        "|---|---|---|---:|---:|---|",
        *rows,
        "",
    ]


def _metric_comparisons(results: dict) -> list[str]:
    rows = []
    for c in results["comparisons"]:
        for task, per_metric in (c.get("metrics") or {}).items():
            for metric, e in per_metric.items():
                lo, hi = e["ci95"]
                rows.append(
                    f"| {c['a']} | {c['b']} | {task} | {metric} | {e['n']} | {_pct(e['a'])} | {_pct(e['b'])} | "
                    f"**{_pts(e['diff'])}** | {_pts(lo)} to {_pts(hi)} | {e['p_le_0']:.3f} |"
                )
    if not rows:
        return []
    return [
        "Text metrics: paired bootstrap of metric(A) − metric(B) on the generation items both runs share.",
        "",
        "| A | B | task | metric | n | A | B | A − B (pts) | 95% CI | P(A ≤ B) |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|",
        *rows,
        "",
    ]


def _comparisons(results: dict) -> list[str]:
    tasks = results["evaluation"]["tasks"]
    lines = [
        "## Comparisons",
        "",
        "Paired bootstrap of acc(A) − acc(B) on the items both runs share (`fslm.evaluate.compare`); points, "
        "95% CI of the macro difference, and the per-task differences.",
        "",
        "| A | B | A − B macro (pts) | 95% CI | P(A ≤ B) | " + " | ".join(tasks) + " |",
        "|---|---|---:|---|---:|" + "---:|" * len(tasks),
    ]
    notes = []
    for c in results["comparisons"]:
        a, b = (f"{c[side]} (selected)" if side in c.get("selected", []) else c[side] for side in ("a", "b"))
        b += " (held-out)" if c.get("heldout") else ""
        if c["state"] != DONE:
            lines.append(f"| {a} | {b} | {c['state']} |" + " |" * (len(tasks) + 2))
            continue
        m = c["tasks"]["macro"]
        per_task = [_pts(c["tasks"][t]["diff"]) if t in c["tasks"] else "—" for t in tasks]
        lo, hi = m["ci95"]
        lines.append(
            f"| {a} | {b} | **{_pts(m['diff'])}** | {_pts(lo)} to {_pts(hi)} | {m['p_le_0']:.3f} | "
            + " | ".join(per_task)
            + " |"
        )
        notes += [f"{c['a']} vs {c['b']}: {note}" for note in c.get("notes", [])]
    return lines + ["", *_metric_comparisons(results)] + [f"Note: {n}\n" for n in dict.fromkeys(notes)]


def _ratio(x: float) -> str:
    return f"{x:.2f}"


def _gap_cells(e: dict | None) -> list[str]:
    """Macro PGR, its CI, the gap with its CI and the share of replicates with a positive gap; no ratio is printed
    when the gap's CI reaches 0 (a ratio over a gap that may be 0 is noise)."""
    if e is None:
        return ["no item all three share", "—", "—", "—", "—"]
    gap = [
        f"{_pts(e['gap'])}",
        f"{_pts(e['gap_ci95'][0])} to {_pts(e['gap_ci95'][1])}",
        f"{100 * e['gap_positive']:.1f}%",
    ]
    if not e["defined"]:
        return ["gap CI includes 0: PGR undefined", "—", *gap]
    lo, hi = e["pgr_ci95"]
    return [f"**{_ratio(e['pgr'])}**", f"{_ratio(lo)} to {_ratio(hi)}", *gap]


def _gap_recovered(results: dict) -> list[str]:
    tasks = results["evaluation"]["tasks"]
    head = [
        "weak",
        "strong",
        "ceiling",
        "PGR macro",
        "95% CI",
        "gap (pts)",
        "gap 95% CI",
        "replicates with gap > 0",
        *tasks,
    ]
    lines = [
        "## Performance gap recovered",
        "",
        "PGR = (acc(strong) − acc(weak)) / (acc(ceiling) − acc(weak)) (Burns et al., 2023): 0 is the weak system's "
        "accuracy, 1 the ceiling's. 95% CIs from a bootstrap that resamples items jointly for the three runs (the same "
        "items of a task in each replicate); the macro PGR is the ratio of macro accuracies. PGR's interval is taken "
        "over the replicates whose gap (ceiling − weak) is positive, whose share is shown; where the gap's own interval "
        "reaches 0 no ratio is shown (undef. per task).",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|---|---:|---|---:|---|---:|" + "---:|" * len(tasks),
    ]
    for g in results["gap_recovered"]:
        names = f"| {g['weak']} | {g['strong']} | {g['ceiling']} |"
        if g["state"] != DONE:
            lines.append(f"{names} {g['state']} |" + " |" * (len(head) - 4))
            continue
        per_task = [
            "—" if t not in g["tasks"] else _ratio(g["tasks"][t]["pgr"]) if g["tasks"][t]["defined"] else "undef."
            for t in tasks
        ]
        lines.append(f"{names} " + " | ".join([*_gap_cells(g["tasks"].get("macro")), *per_task]) + " |")
    return [*lines, ""]


def _selection(sel: dict) -> list[str]:
    lines = [
        "## Selection on held-out items",
        "",
        f"Rule, fixed before any held-out number was seen: among {', '.join(sel['among'])}, {sel['rule']}; "
        f"{sel['limit'] or 'all'} held-out items per task (`--split heldout`: items no test run reads).",
        "",
        "| candidate | held-out macro % | 95% CI |",
        "|---|---:|---|",
    ]
    for name in [*sel["among"], *sel["context"]]:
        mark = " ← chosen" if name == sel["chosen"] else " (context, never chosen)" if name in sel["context"] else ""
        lines.append(f"| {name}{mark} | {_pct(sel['heldout_macro'][name])} | {_ci(sel['heldout_macro_ci95'][name])} |")
    chosen = sel["chosen"] or "not yet (some held-out runs are unfinished)"
    lines += ["", f"Chosen: **{chosen}**."]
    if sel["beaten_by_context"]:
        lines.append(f"Context systems with a higher held-out macro: {', '.join(sel['beaten_by_context'])}.")
    return [*lines, ""]


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_TRACE_CHARS else text[:MAX_TRACE_CHARS] + " …"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in _clip(text).splitlines()) or "> "


def _traces(results: dict) -> list[str]:
    lines = ["## Example traces", ""]
    for t in results["traces"]:
        lines += [f"### {t['system']}: {t['rule']}", ""]
        if t.get("state") != DONE:
            lines += ["(waiting for its runs)", ""]
        elif not t["items"]:
            lines += ["(no item matches)", ""]
        for item in t["items"]:
            verdict = "right" if item["correct"] else "wrong"
            lines += [f"**{item['id']}** ({verdict}: predicted {item['prediction']!r}, gold {item['gold']!r})", ""]
            lines += [_quote(item["prompt"]), ""]
            for stage, text in item["stages"].items():
                lines += [f"*{stage}*:", "", _quote(text), ""]
    return lines


def _free_text_note(tasks: list[str]) -> list[str]:
    from fslm.tasks import get_task

    free = [t for t in tasks if get_task(t).free_text]
    if not free:
        return []
    return [
        f"Accuracy on {', '.join(free)} is the exact match of a whole free-form answer, which a reply rarely meets: "
        "compare those systems by the text metrics.",
        "",
    ]


def results_markdown(results: dict, pareto: bool) -> str:
    ev = results["evaluation"]
    lines = [f"# {results.get('title') or results['name']}", ""]
    if results["description"]:
        lines += [results["description"].strip(), ""]
    lines += [
        f"Tasks {', '.join(ev['tasks'])}; split {ev['split']}; {ev['limit'] or 'all'} items per task "
        f"({results['items_per_system']} per system); model systems {ev['num_fewshot']}-shot, stacks zero-shot; "
        f"generation budget {ev['gen_max_tokens']} tokens. Written by `fslm experiment run` from the run folders "
        "under runs/ (items.jsonl per item, summary.json per system); seconds are this machine's: s/item is wall "
        "time, CPU s/item the evaluating process's CPU time over all its threads (not inflated by pauses or by other "
        "processes sharing the machine).",
        "",
        *_free_text_note(ev["tasks"]),
        "## Systems",
        "",
        *_systems_table(results),
        "",
        *_metrics_table(results),
    ]
    if pareto:
        lines += [
            f"![accuracy vs seconds per item]({PARETO})",
            "",
            "Systems on the frontier (no other system is both at least as accurate and at least as fast) are joined.",
            "",
        ]
    if results["comparisons"]:
        lines += _comparisons(results)
    if results.get("gap_recovered"):
        lines += _gap_recovered(results)
    if results["selection"]:
        lines += _selection(results["selection"])
    if results["traces"]:
        lines += _traces(results)
    if results.get("notes"):
        lines += ["## Notes", "", results["notes"].strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _write_if_changed(path: Path, data: str | bytes) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not path.is_file() or path.read_bytes() != raw:
        write_atomic(path, raw)


def write_report(spec: ExperimentSpec, plan: Plan) -> Path:
    """Write results.json, pareto.png and RESULTS.md under the experiment's folder; returns RESULTS.md's path."""
    results = gather(spec, plan)
    results["title"] = spec.report.title
    if spec.report.notes is not None:
        results["notes"] = read_text(spec.resolve(spec.report.notes))
    out = spec.out_dir
    _write_if_changed(out / RESULTS_JSON, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    png = pareto_png(results) if spec.report.pareto else None
    if png is not None:
        _write_if_changed(out / PARETO, png)
    _write_if_changed(out / spec.report.file, results_markdown(results, png is not None))
    return out / spec.report.file
