"""`compare`: the Python twin of `fslm eval compare RUN_A RUN_B` — paired bootstrap of accuracy differences."""

from __future__ import annotations

import os
from pathlib import Path

from fslm.errors import DataError, InputError
from fslm.evaluate.report import ITEM_METRICS
from fslm.evaluate.stats import N_BOOT, SEED, paired_bootstrap
from fslm.evaluate.store import ITEMS, has_items, items_bytes
from fslm.evaluate.systems import RAW_FORMATS
from fslm.io import decode_text, iter_jsonl, read_json_object, write_atomic, write_json

# How each kind of system is asked: a model gets lm-eval's raw context, a stack its chat prompt (any options listed).
PROMPT_FORMATS = {"model": "lm-eval raw prompts", "stack": "the stack's chat prompt (options, if any, listed)"}


def prompt_format(info: dict) -> str | None:
    """How a run's final scorer was asked: a stack with a raw answer format reads lm-eval's raw context, as a model does."""
    raw_scorer = info.get("answer_format") == "stack" and info.get("choice_format") == "raw"
    if info.get("kind") == "stack" and (info.get("answer_format") in RAW_FORMATS or raw_scorer):
        return PROMPT_FORMATS["model"]
    return PROMPT_FORMATS.get(info.get("kind", ""))


def format_notes(a: dict, b: dict) -> list[str]:
    """Warnings for differences other than the systems themselves: a 135M model's per-task accuracy moves by tens of
    points between prompt formats (BoolQ's yes/no prior flips), so such a difference is not the stack's doing."""
    notes = []
    fa, fb = prompt_format(a), prompt_format(b)
    if fa and fb and fa != fb:
        notes.append(
            f"A is asked with {fa}, B with {fb}: the difference mixes the prompt format with the systems. "
            "Compare a stack with its base model in the same format too (a one-stage stack of the answer stage "
            "with --no-adapters)."
        )
    if a.get("num_fewshot", 0) != b.get("num_fewshot", 0):
        notes.append(f"A is {a.get('num_fewshot', 0)}-shot, B is {b.get('num_fewshot', 0)}-shot.")
    return notes


def read_run(run: str | Path) -> tuple[dict, dict[tuple[str, str], float]]:
    """(summary.json's system/kind/num_fewshot, {(task, id): per-item acc}) from a run folder or its items.jsonl."""
    path = Path(run)
    if not (has_items(path) if path.is_dir() else path.is_file()):
        raise InputError(f"{run}: no {ITEMS} here; give a folder written by `fslm eval --out DIR`")
    items, data = items_bytes(path)
    values: dict[tuple[str, str], float] = {}
    malformed = "{path}:{line}: malformed row ({problem}); expected a JSON object per line"
    # strict UTF-8 and a size cap: a bad byte names its line
    for lineno, row in iter_jsonl(items, text=decode_text(items, data), bad_line=malformed):
        try:
            values[(str(row["task"]), str(row["id"]))] = float(row["acc"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{items}:{lineno}: malformed row; expected a JSON object with 'task', 'id' and 'acc'"
            ) from None
    summary = items.parent / "summary.json"
    info: dict = {"system": items.parent.name}
    if summary.is_file():  # optional, but a damaged one is said, not silently dropped (it sets the format notes)
        data = read_json_object(summary)
        info.update(
            {k: data[k] for k in ("system", "kind", "num_fewshot", "answer_format", "choice_format") if k in data}
        )
    return info, values


def compare(
    run_a: str | Path, run_b: str | Path, *, n_boot: int = N_BOOT, seed: int = SEED, out_dir: str | Path | None = None
) -> dict:
    """Per task and macro: acc of A, acc of B, A - B and its paired-bootstrap 95% CI, on the items both runs share;
    and the macro with each task left out in turn (`macro_without`, from the same replicates).

    Items only one run has are left out and counted (`only_a`, `only_b`). With `out_dir`, writes compare.json and
    compare.md there, naming each run by its path from `out_dir`.
    """
    info_a, a = read_run(run_a)
    info_b, b = read_run(run_b)
    name_a, name_b = info_a["system"], info_b["system"]
    shared = [key for key in a if key in b]
    if not shared:
        raise InputError(f"{run_a} and {run_b} share no (task, id) items; evaluate both on the same tasks and split")
    per_a: dict[str, list[float]] = {}
    per_b: dict[str, list[float]] = {}
    for task, item_id in shared:
        per_a.setdefault(task, []).append(a[(task, item_id)])
        per_b.setdefault(task, []).append(b[(task, item_id)])
    tasks = paired_bootstrap(per_a, per_b, n_boot=n_boot, seed=seed, leave_one_out=True)
    result = {
        "a": {"run": str(run_a), "system": name_a},
        "b": {"run": str(run_b), "system": name_b},
        "only_a": len(a) - len(shared),
        "only_b": len(b) - len(shared),
        "n_boot": n_boot,
        "tasks": tasks,
        "macro_without": tasks.pop("macro_without", {}),  # the macro with each task left out in turn (3+ tasks)
        "notes": format_notes(info_a, info_b),
    }
    if out_dir is not None:
        folder = Path(out_dir)
        for side, run in (
            ("a", run_a),
            ("b", run_b),
        ):  # from compare.json's folder: results stay valid when moved or cloned
            result[side]["run"] = os.path.relpath(Path(run).resolve(), folder.resolve())
        write_json(folder / "compare.json", result)
        write_atomic(folder / "compare.md", compare_markdown(result))
    return result


def read_item_metrics(run: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {metric: {item id: value}}} from a run folder's item_metrics.json ({} when it has none)."""
    path = Path(run) / ITEM_METRICS
    if not path.is_file():
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for task, entry in read_json_object(path)["tasks"].items():
            ids = [str(i) for i in entry["ids"]]
            out[task] = {name: dict(zip(ids, map(float, vals), strict=True)) for name, vals in entry["values"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(
            f"{path}: malformed; expected {{tasks: {{task: {{ids: [...], values: {{metric: [...]}}}}}}}}"
        ) from None
    return out


def compare_metrics(
    run_a: str | Path, run_b: str | Path, names: list[str], *, n_boot: int = N_BOOT, seed: int = SEED
) -> dict[str, dict[str, dict]]:
    """{task: {metric: paired-bootstrap entry of mean(A) - mean(B)}} for the generation tasks and text metrics both
    runs scored (`evaluate(..., metrics=)`), on the items both share; the entries are `paired_bootstrap`'s
    (n, a, b, diff, ci95, p_le_0). A metric missing from either run is left out."""
    ma, mb = read_item_metrics(run_a), read_item_metrics(run_b)
    out: dict[str, dict[str, dict]] = {}
    for task in ma.keys() & mb.keys():
        for name in names:
            va, vb = ma[task].get(name), mb[task].get(name)
            if va is None or vb is None:
                continue
            shared = [i for i in va if i in vb]
            if not shared:
                continue
            entry = paired_bootstrap(
                {task: [va[i] for i in shared]}, {task: [vb[i] for i in shared]}, n_boot=n_boot, seed=seed
            )
            out.setdefault(task, {})[name] = entry[task]
    return {task: out[task] for task in sorted(out)}


def compare_markdown(result: dict) -> str:
    a, b = result["a"]["system"], result["b"]["system"]
    lines = [
        f"# {a} (A) vs {b} (B)",
        "",
        f"Paired bootstrap ({result['n_boot']} resamples) of acc(A) - acc(B) on shared items; "
        f"items only in A: {result['only_a']}, only in B: {result['only_b']}.",
        "",
        *[f"**Note:** {note}\n" for note in result.get("notes", [])],
        "| task | n | A % | B % | A − B (pts) | 95% CI (pts) | P(A ≤ B) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for task, e in result["tasks"].items():
        lo, hi = e["ci95"]
        name = f"**{task}**" if task == "macro" else task
        lines.append(
            f"| {name} | {e['n']} | {100 * e['a']:.1f} | {100 * e['b']:.1f} | {100 * e['diff']:+.1f} | "
            f"{100 * lo:+.1f} to {100 * hi:+.1f} | {e['p_le_0']:.3f} |"
        )
    if result.get("macro_without"):
        lines += [
            "",
            "Macro with one task left out (does the macro difference rest on one task?):",
            "",
            "| left out | A % | B % | A − B (pts) | 95% CI (pts) |",
            "|---|---:|---:|---:|---|",
        ]
        for task, e in result["macro_without"].items():
            lines.append(
                f"| {task} | {100 * e['a']:.1f} | {100 * e['b']:.1f} | {100 * e['diff']:+.1f} | "
                f"{100 * e['ci95'][0]:+.1f} to {100 * e['ci95'][1]:+.1f} |"
            )
    return "\n".join(lines) + "\n"
