"""An experiment's results as data (results.json): per-system summaries, comparisons, the selection, traces, the
performance gap recovered.

Everything is derived from the run folders. Comparisons call `fslm.evaluate.compare` (paired bootstrap), the gap
recovered `fslm.evaluate.stats.gap_recovered`; both are redone only when a run's items.jsonl changed (its sha256 is
kept beside compare.json or gap.json), so a rerun of a finished experiment recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fslm.evaluate import compare
from fslm.evaluate.compare import compare_metrics, read_run
from fslm.evaluate.report import ITEM_METRICS
from fslm.evaluate.stats import N_BOOT, gap_recovered
from fslm.evaluate.store import items_bytes, read_rows
from fslm.experiment.plan import COMPARE, DONE, EVAL, SELECT, Job, Plan
from fslm.experiment.spec import ExperimentSpec, GapSpec, TraceRule
from fslm.io import write_json

INPUTS = "inputs.json"
METRICS_COMPARE = "compare_metrics.json"  # {task: {metric: paired-bootstrap entry}} (evaluation.metrics)
GAP = "gap.json"  # performance gap recovered of one report.gap_recovered entry
RULES = {"best_heldout_macro": "the highest held-out macro accuracy (a tie goes to the one listed first)"}


def describe(spec: ExperimentSpec, name: str) -> str:
    """What a system is, in a few words (its `label` when the spec gives one)."""
    system = spec.systems[name]
    if system.label:
        return system.label
    if system.is_model:
        shots = spec.fewshot(name)
        steered = f" proxy-tuned by {system.expert_delta} (alpha {system.delta_alpha:g})" if system.expert_delta else ""
        dtype = f" ({system.dtype})" if system.dtype else ""
        return f"{system.model}{dtype}{steered or ' alone'}" + (f", {shots}-shot" if shots else "")
    parts = [f"stack {system.stack}" if system.stack else f"{system.from_}"]
    patch = system.patch
    if patch is not None:
        parts += [f"without {', '.join(patch.drop)}"] if patch.drop else []
        parts += [f"only {', '.join(patch.keep)}"] if patch.keep is not None else []
        parts += [f"{stage}: adapter {'removed' if a is None else a}" for stage, a in patch.adapters.items()]
        parts += [f"{stage}: new {', '.join(fields)}" for stage, fields in patch.stages.items()]
    parts += ["no adapters"] if not system.adapters else []
    parts += [f"answer format {system.answer_format}"] if system.answer_format != "stack" else []
    return "; ".join(parts)


def _rel(path: Path, spec: ExperimentSpec) -> str:
    return os.path.relpath(path.resolve(), spec.out_dir.resolve())


def system_entry(spec: ExperimentSpec, name: str, job: Job | None) -> dict:
    entry: dict = {"label": describe(spec, name), "kind": "model" if spec.systems[name].is_model else "stack"}
    if job is None:
        return entry
    entry.update(state=job.state, progress=job.progress, run=_rel(job.folder, spec))
    summary = job.summary
    if job.state != DONE or summary is None:
        return entry
    cost = summary["cost"]
    entry.update(
        system=summary["system"],
        n_items=summary["n_items"],
        macro_acc=summary["macro_acc"],
        macro_ci95=summary["macro_ci95"],
        tasks={t: {k: v[k] for k in ("n", "acc", "ci95")} for t, v in summary["tasks"].items()},
        seconds_per_item=cost["seconds_per_item"],
        cpu_seconds_per_item=_per_item(cost.get("cpu_seconds"), summary["n_items"]),
        tokens_in_per_item=cost["tokens_in_per_item"],
        generated_tokens_per_item=cost["generated_tokens_per_item"],
        params_touched=summary["params_touched"],
        peak_rss_mb=cost["peak_rss_mb"],
        wall_seconds=cost["wall_seconds"],
    )
    scored = {t: v["metrics"] for t, v in summary["tasks"].items() if v.get("metrics")}
    if scored:  # generation tasks: mean and 95% bootstrap CI per text metric (evaluation.metrics)
        entry["metrics"] = scored
    return entry


def _per_item(total: float | None, n: int) -> float | None:
    """CPU seconds per item: unlike wall seconds, not inflated by a paused run or by other processes' turns."""
    return round(total / n, 4) if total and n else None


def selection(spec: ExperimentSpec, plan: Plan) -> dict | None:
    """The rule applied to the held-out runs; `chosen` stays None until every candidate is done."""
    if spec.selection is None:
        return None
    runs = plan.runs(SELECT)
    among, every = spec.selection.among, spec.selection.systems
    done = {n: runs[n].summary if runs[n].state == DONE else None for n in every}
    macro = {n: s["macro_acc"] if s else None for n, s in done.items()}
    complete = all(macro[n] is not None for n in among)
    chosen = max(among, key=lambda n: (macro[n], -among.index(n))) if complete else None
    return {
        "rule": RULES[spec.selection.rule],
        "among": among,
        "context": spec.selection.context,
        "split": "heldout",
        "limit": spec.selection.limit,
        "heldout_macro": macro,
        "heldout_macro_ci95": {n: s["macro_ci95"] if s else None for n, s in done.items()},
        "runs": {n: _rel(runs[n].folder, spec) for n in every},
        "chosen": chosen,
        "beaten_by_context": [
            n for n in spec.selection.context if chosen and macro[n] is not None and macro[n] > macro[chosen]
        ],
    }


def resolve(name: str, chosen: dict | None) -> str | None:
    """A system name from the spec, with 'selected' replaced by the selection's choice (None until it is made)."""
    return (chosen or {}).get("chosen") if name == "selected" else name


def _digest(folder: Path) -> str:
    return hashlib.sha256(items_bytes(folder)[1]).hexdigest()  # the same before and after compress_run


def comparison(spec: ExperimentSpec, plan: Plan, a: str, b: str, heldout: bool = False) -> dict:
    """compare.json of two finished runs (computed once per pair of items.jsonl contents), or why it is missing."""
    runs = plan.runs(SELECT if heldout else EVAL)
    entry: dict = {"a": a, "b": b, "heldout": heldout}
    waiting = [n for n in (a, b) if runs[n].state != DONE]
    if waiting:
        return {**entry, "state": f"waiting for {', '.join(waiting)}"}
    folder = spec.out_dir / COMPARE / f"{'heldout-' if heldout else ''}{a}-vs-{b}"
    inputs = {"a": _digest(runs[a].folder), "b": _digest(runs[b].folder), "n_boot": N_BOOT}
    names = spec.evaluation.metrics
    if names:  # the per-item metric values count too (a rerun may add metrics to unchanged rows)
        inputs["metrics"] = {"names": names, "a": _metrics_digest(runs[a].folder), "b": _metrics_digest(runs[b].folder)}
    cached, cached_metrics = folder / "compare.json", folder / METRICS_COMPARE
    fresh = (folder / INPUTS).is_file() and json.loads((folder / INPUTS).read_text()) == inputs
    if fresh and cached.is_file() and (not names or cached_metrics.is_file()):
        result = json.loads(cached.read_text(encoding="utf-8"))
        metrics = json.loads(cached_metrics.read_text(encoding="utf-8")) if names else {}
    else:
        result = compare(runs[a].folder, runs[b].folder, out_dir=folder)
        metrics = compare_metrics(runs[a].folder, runs[b].folder, names) if names else {}
        if names:
            write_json(cached_metrics, metrics)
        write_json(folder / INPUTS, inputs)
    done = {
        **entry,
        "state": DONE,
        "folder": _rel(folder, spec),
        "only_a": result["only_a"],
        "only_b": result["only_b"],
        "tasks": result["tasks"],
        "notes": result.get("notes", []),
    }
    return {**done, "metrics": metrics} if metrics else done


def gap_entry(spec: ExperimentSpec, plan: Plan, gap: GapSpec) -> dict:
    """Performance gap recovered of three finished runs on the items all three share (`fslm.evaluate.stats.
    gap_recovered`), computed once per triple of items.jsonl contents like a comparison; or which runs are missing."""
    runs = plan.runs(EVAL)
    names = {"weak": gap.weak, "strong": gap.strong, "ceiling": gap.ceiling}
    waiting = [n for n in names.values() if runs[n].state != DONE]
    if waiting:
        return {**names, "state": f"not run: {', '.join(waiting)}"}
    folder = spec.out_dir / COMPARE / f"gap-{gap.strong}-from-{gap.weak}-to-{gap.ceiling}"
    inputs = {**{role: _digest(runs[n].folder) for role, n in names.items()}, "n_boot": N_BOOT}
    cached = folder / GAP
    if (folder / INPUTS).is_file() and json.loads((folder / INPUTS).read_text()) == inputs and cached.is_file():
        result = json.loads(cached.read_text(encoding="utf-8"))
    else:
        scores = {role: read_run(runs[n].folder)[1] for role, n in names.items()}
        shared = [key for key in scores["weak"] if key in scores["strong"] and key in scores["ceiling"]]
        per_task: dict[str, dict[str, list[float]]] = {role: {} for role in names}
        for role, values in scores.items():
            for task, item_id in shared:
                per_task[role].setdefault(task, []).append(values[(task, item_id)])
        result = {
            "n_boot": N_BOOT,
            "not_shared": {role: len(values) - len(shared) for role, values in scores.items()},
            "tasks": gap_recovered(per_task["weak"], per_task["strong"], per_task["ceiling"], n_boot=N_BOOT),
        }
        write_json(cached, result)
        write_json(folder / INPUTS, inputs)
    return {**names, "state": DONE, "folder": _rel(folder, spec), **result}


def _metrics_digest(folder: Path) -> str | None:
    path = folder / ITEM_METRICS
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def traces(spec: ExperimentSpec, plan: Plan, rule: TraceRule, chosen: dict | None) -> dict:
    """The first `rule.count` items, in evaluation order, that match the rule (never picked by hand)."""
    system, versus = resolve(rule.system, chosen), resolve(rule.versus, chosen) if rule.versus else None
    entry: dict = {"system": system, "rule": trace_rule_text(rule), "items": []}
    runs = plan.runs(EVAL)
    needed = [n for n in (system, versus) if n is not None]
    if system is None or (rule.versus and versus is None) or any(runs[n].state != DONE for n in needed):
        return {**entry, "state": "waiting"}
    rows = read_rows(runs[system].folder)
    other = read_rows(runs[versus].folder) if versus else {}
    ids = plan.items[(runs[system].split, runs[system].limit)]
    for task, task_ids in ids.items():
        if rule.task is not None and task != rule.task:
            continue
        for item_id in task_ids:
            row = rows[item_id]
            if rule.where != "any" and bool(row["correct"]) != (rule.where == "correct"):
                continue
            if versus and bool(other[item_id]["correct"]) == bool(row["correct"]):
                continue
            entry["items"].append(_trace_item(row, other.get(item_id)))
            if len(entry["items"]) >= rule.count:
                return {**entry, "state": DONE}
    return {**entry, "state": DONE}


def trace_rule_text(rule: TraceRule) -> str:
    parts = ["the first item" if rule.count == 1 else f"the first {rule.count} items", "in evaluation order"]
    parts += [f"of {rule.task}"] if rule.task else []
    parts += (
        [f"that {rule.system} got {'right' if rule.where == 'correct' else 'wrong'}"] if rule.where != "any" else []
    )
    parts += [f"where {rule.versus} got the opposite"] if rule.versus else []
    return " ".join(parts)


def _answer_text(row: dict, key: str) -> str:
    value = row.get(key)
    choices = row.get("choices")
    if choices and isinstance(value, int) and 0 <= value < len(choices):
        return choices[value]
    return "" if value is None else str(value)


def _trace_item(row: dict, other: dict | None) -> dict:
    item = {
        "id": row["id"],
        "task": row["task"],
        "prompt": row["prompt"],
        "stages": row.get("stages") or {},
        "prediction": _answer_text(row, "prediction"),
        "gold": _answer_text(row, "gold"),
        "correct": bool(row["correct"]),
    }
    if row.get("generation") is not None:
        item["generation"] = row["generation"]
    if other is not None:
        item["versus_prediction"] = _answer_text(other, "prediction")
    return item


def gather(spec: ExperimentSpec, plan: Plan) -> dict:
    """results.json: everything RESULTS.md shows, as data."""
    runs = plan.runs(EVAL)
    chosen = selection(spec, plan)
    pairs = []
    for pair in spec.comparisons:
        a, b = resolve(pair.a, chosen), resolve(pair.b, chosen)
        if a is None or b is None or a == b:
            reason = "waiting for the selection" if a is None or b is None else "the selection chose the other side"
            pairs.append({"a": a or pair.a, "b": b or pair.b, "heldout": pair.heldout, "state": reason})
        else:
            entry = comparison(spec, plan, a, b, pair.heldout)
            pairs.append({**entry, "selected": [side for side in ("a", "b") if getattr(pair, side) == "selected"]})
    return {
        "name": spec.name,
        "description": spec.description,
        "evaluation": {**spec.evaluation.model_dump(mode="json"), "tasks": spec.evaluation.task_names},
        "items_per_system": sum(len(v) for v in plan.items[(spec.test_split(), spec.evaluation.limit)].values()),
        "systems": {name: system_entry(spec, name, runs.get(name)) for name in spec.systems},
        "comparisons": pairs,
        "selection": chosen,
        "traces": [traces(spec, plan, rule, chosen) for rule in spec.report.traces],
        "gap_recovered": [gap_entry(spec, plan, gap) for gap in spec.report.gap_recovered],
    }
