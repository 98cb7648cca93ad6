"""Step `choice` (attempt 2): the answer stage also learns choice-style questions from TRAIN/DEV splits.

Why: the benchmarks score the answer stage's log-probability of each option after the earlier stages' texts, while
Alpaca teaches it free-form replies. Here the answer adapter is retrained on the Alpaca records plus multiple-choice
questions from splits the evaluation never reads (ARC-Challenge dev, MMLU dev, OpenBookQA train), rendered exactly
as the evaluation renders them, with the gold option's text as the target. Their intent/facts/reasoning texts are
written by the TRAINED stack's own stages (what the answer stage will see at test time), not by the teacher.

work/choice/self_targets.jsonl   earlier-stage texts per question (a DistillStore: resumes per batch)
work/choice/train.jsonl          Alpaca kept records + those records (the answer stage's training data)
work/finetune-choice/            fslm.finetune of the answer stage only (resumes from checkpoints)
out/trained_stack_choice/        stack.yaml (intermediate adapters from trained_stack/, the new answer adapter)
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import distilled_path
from recipe import Recipe, read_json
from variants import package_variant

from fslm.config import load_stack_config
from fslm.distill import DistillStore, read_distilled
from fslm.engine import load_engine
from fslm.errors import ConfigError
from fslm.evaluate.prompts import stack_continuations, stack_prompt
from fslm.evaluate.store import write_atomic, write_json
from fslm.finetune import TrainOptions, finetune
from fslm.stack import Stack
from fslm.tasks import load_task

# (task, split the evaluation never reads). Each contributes up to a third of `choice_records`, in file order.
SOURCES = (("arc_challenge", "validation"), ("mmlu", "dev"), ("openbookqa", "train"))
BATCH = 16


def choice_dir(recipe: Recipe) -> Path:
    return recipe.out / "trained_stack_choice"


def questions(recipe: Recipe) -> list[dict]:
    """The training questions: id, the prompt the stack gets at evaluation, the gold option's text."""
    per_source = -(-recipe.choice_records // len(SOURCES))
    rows = []
    for task, split in SOURCES:
        for item in load_task(task, split=split, limit=per_source):
            rows.append({"id": item.id, "prompt": stack_prompt(item), "gold": stack_continuations(item)[item.gold]})
    return rows[: recipe.choice_records]


def done(recipe: Recipe) -> bool:
    return recipe.choice_records == 0 or (
        read_json(recipe.out / "choice.json") is not None and (choice_dir(recipe) / "stack.yaml").is_file()
    )


def _self_targets(recipe: Recipe, rows: list[dict], log) -> Path:
    path = recipe.work / "choice" / "self_targets.jsonl"
    trained = recipe.trained_dir / "stack.yaml"
    with DistillStore(path) as store:
        todo = [r for r in rows if r["id"] not in store.done]
        if todo:
            stack = Stack.load(trained)
            early = len(stack.config.stages) - 1
            answer = stack.config.stages[-1].name
            for start in range(0, len(todo), BATCH):
                batch = todo[start : start + BATCH]
                log(f"    earlier-stage texts: {len(rows) - len(todo) + start}/{len(rows)} questions")
                results = stack.run_batch([r["prompt"] for r in batch], stages=early)
                store.append(
                    [
                        {
                            "id": r["id"],
                            "prompt": r["prompt"],
                            "gold": r["gold"],
                            "hinted": False,
                            "kept": True,
                            "filtered": [],
                            "targets": {**{t.stage: t.output for t in res.trace}, answer: r["gold"]},
                            "teacher": f"self:{trained}",
                            "stack": stack.config.name,
                        }
                        for r, res in zip(batch, results, strict=True)
                    ]
                )
            del stack
    return path


def run(recipe: Recipe, log=print) -> dict:
    if recipe.choice_records == 0:
        return {}
    trained = recipe.trained_dir / "stack.yaml"
    if not trained.is_file():
        raise ConfigError(f"no {trained}: run the 'finetune' step first")
    rows = questions(recipe)
    log(f"  {len(rows)} choice-style questions from {', '.join(f'{t} {s}' for t, s in SOURCES)}")
    targets = _self_targets(recipe, rows, log)
    alpaca = [r for r in read_distilled(distilled_path(recipe)) if r.get("kept")]
    combined = recipe.work / "choice" / "train.jsonl"
    mixed = alpaca + list(read_distilled(targets))
    write_atomic(
        combined,
        "".join(json.dumps({k: v for k, v in r.items() if k != "_line"}, ensure_ascii=False) + "\n" for r in mixed),
    )

    plan = read_json(recipe.work / "finetune" / "rank.json")
    cfg = load_stack_config(trained)  # intermediate adapters stay (finetune keeps them by absolute path)
    options = TrainOptions(
        rank=plan["rank"],
        alpha=plan["alpha"],
        targets=tuple(plan["targets"]),
        epochs=recipe.epochs,
        save_dtype="float16",
    )
    work = recipe.work / "finetune-choice"
    answer = cfg.stages[-1].name
    report = finetune(
        cfg,
        combined,
        work,
        options,
        stages=[answer],
        engine=load_engine(cfg.base_model, dtype="float32"),
        progress=lambda stage, step, total, loss: (
            log(f"    {stage} {step}/{total} loss {loss:.3f}") if step % 10 == 0 or step == total else None
        ),
    )

    package_variant(recipe, cfg, work, [answer], choice_dir(recipe), "choice")
    data = {
        "sources": [f"{t}:{s}" for t, s in SOURCES],
        "questions": len(rows),
        "alpaca_records": len(alpaca),
        "train_records": len(mixed),
        "answer_stage": report.stages.get(answer, {}),
        "rank": plan["rank"],
    }
    write_json(recipe.out / "choice.json", data)
    return data
