"""Bridge to lm-evaluation-harness: our items as lm-eval documents, and a built-in vs lm-eval agreement check.

The shipped task YAMLs (fslm/lm_eval_tasks/) load their data through `harness_dataset`, which converts the items
our loaders read into a small JSONL file under the cache dir and opens it with `datasets`' "json" builder
(dataset_path json + data_files), so lm-eval runs offline on exactly the items `fslm eval` scores, in the same
order (`lm_eval --limit N` == `fslm eval --limit N`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from fslm.settings import get_settings
from fslm.tasks import Item, get_task

TASK_PREFIX = "fslm_"


def tasks_dir() -> Path:
    """The folder to pass to lm-eval's --include_path."""
    return Path(str(resources.files("fslm") / "lm_eval_tasks"))


def to_doc(item: Item) -> dict:
    """An lm-eval document: lm-eval joins context + " " + choice, exactly our context + continuation."""
    doc: dict = {"id": item.id, "context": item.context}
    if item.task == "mmlu":  # lm-eval renders the description before any few-shot examples
        desc = item.meta.get("description", "")
        doc["description"] = desc
        doc["context"] = item.context[len(desc) :] if item.context.startswith(desc) else item.context
    if not item.choices:
        doc["answer"] = str(item.gold)
        doc["solution"] = item.meta.get("solution", str(item.gold))  # the few-shot target, as lm-eval's gsm8k
        return doc
    if any(not c.startswith(" ") for c in item.continuations):
        raise ValueError(f"{item.id}: continuations must start with the ' ' target delimiter")
    doc["gold"] = int(item.gold)
    if item.contexts:  # WinoGrande partial scoring: one context per option, one shared continuation
        doc["contexts"] = list(item.contexts)
        doc["continuation"] = item.continuations[0][1:]
    else:
        doc["choices"] = [c[1:] for c in item.continuations]
    if item.task == "truthfulqa_mc2":
        doc["gold_set"] = list(item.gold_set)
    return doc


def write_docs(task: str, split: str | None = None) -> Path:
    """Write (or refresh) the JSONL cache of one task split; returns its path."""
    from fslm.io import write_atomic
    from fslm.tasks.splits import select_items

    items = select_items(task, None, split)
    name = f"{task}.{split or get_task(task).split}.jsonl"
    path = get_settings().cache_dir / "lm_eval_data" / name
    write_atomic(path, "".join(json.dumps(to_doc(it), ensure_ascii=False) + "\n" for it in items))
    return path


def harness_dataset(fslm_task: str, **_: object):
    """lm-eval `custom_dataset` hook: {"test": eval split, "fewshot": train/dev split when the task has one}."""
    import datasets

    spec = get_task(fslm_task)
    files = {"test": str(write_docs(fslm_task))}
    if spec.fewshot_split is not None:
        files["fewshot"] = str(write_docs(fslm_task, spec.fewshot_split))
    return datasets.load_dataset("json", data_files=files)


def agreement(
    system, tasks: list[str], limit: int, *, out: str | Path | None = None, gen_max_tokens: int = 256
) -> dict:
    """Run the same items through `fslm eval` and through lm-eval with the fslm model; compare accuracies.

    Returns {task: {"n", "builtin": {metric: value}, "lm_eval": {metric: value}, "same": bool}}.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    from fslm.evaluate.run import evaluate
    from fslm.evaluate.scoring import metric_name
    from fslm.io import write_json
    from fslm.lm_eval_plugin import FslmLM

    built = evaluate(system, tasks, limit, gen_max_tokens=gen_max_tokens)
    results = lm_eval.simple_evaluate(
        model=FslmLM(system=system),
        tasks=[TASK_PREFIX + t for t in tasks],
        limit=limit,
        task_manager=TaskManager(include_path=str(tasks_dir()), include_defaults=False),
        bootstrap_iters=0,
        gen_kwargs={"max_gen_toks": gen_max_tokens},
    )["results"]
    report = {}
    for task in tasks:
        ours, theirs = built.tasks[task], results[TASK_PREFIX + task]
        metric = "exact_match" if metric_name(task) == "exact_match" else "acc"
        b = {"acc": ours["acc"], "acc_norm": ours["acc_norm"]}
        h = {"acc": round(theirs[f"{metric},none"], 6), "acc_norm": None}
        if ours["acc_norm"] is not None:
            h["acc_norm"] = round(theirs["acc_norm,none"], 6)
        tol = 1e-3 if metric_name(task) == "mc2" else 1e-9  # mc2 is a float mass; padding changes the 6th digit
        same = all((b[k] is None) == (h[k] is None) and (b[k] is None or abs(b[k] - h[k]) <= tol) for k in b)
        report[task] = {"n": ours["n"], "builtin": b, "lm_eval": h, "same": same}
    summary = {
        "system": system.name,
        "limit": limit,
        "tasks": report,
        "all_same": all(r["same"] for r in report.values()),
    }
    if out is not None:
        write_json(Path(out), summary)
    return summary
