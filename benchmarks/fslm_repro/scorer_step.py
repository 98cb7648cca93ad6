"""Step `scorer` (attempt 5): the answer stage trained to score what it is scored on.

Why (RESULTS.md): the answer stage's chat format costs the 135M model 15-20 points on completion-style tasks
(ARC-Easy, HellaSwag, PIQA) against lm-eval's raw format, and the one intermediate text that helped a plain scorer is
retrieved solved questions from the tail corpus (`stack-retrieval-tail-raw`, the only system so far whose CI against
the base model excludes zero). Attempt 2 (`choice`) trained the answer stage on 240 choice questions in the chat
format and overfit. Here the retrieval stack's answer stage gets a LoRA adapter trained on `scorer_records` choice
questions the evaluation never reads, as (context, continuation) pairs exactly as `--answer-format raw-adapter`
scores them: the retrieved passages (its own passage left out) and lm-eval's raw context -> the gold option's
continuation (fslm.finetune.finetune_pairs: the loss is the log-probability the evaluation compares).

Training questions: for each multiple-choice task, an equal share drawn (seed 0) from the items the tail corpus may
hold: its train/dev splits and its evaluation split past the first EVAL_RESERVE items, minus every evaluated item and
the head of the held-out pool that `select` reads (fslm.retrieve.corpus.reserved_items), so neither the test items
nor the held-out items are ever trained on.

work/scorer/pairs.jsonl                    the training pairs (rebuilt identically from the data; seconds)
work/finetune-scorer/                      fslm.finetune_pairs' folder (resumes from checkpoints)
work/retrieval/tail/stack-scorer.yaml      retrieve (tail index) -> answer with the trained adapter
out/trained_stack_scorer/                  the adapter (fp16), train_log.json, loss.png: what survives the machine
out/scorer.json                            questions per task, skipped pairs, losses, options
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import retrieval_step
from recipe import Recipe, read_json

from fslm.config import load_stack_config
from fslm.engine import load_engine
from fslm.errors import ConfigError
from fslm.evaluate import select_items
from fslm.evaluate.heldout import EVAL_RESERVE
from fslm.evaluate.prompts import raw_notes, stack_prompt
from fslm.evaluate.store import write_atomic, write_json
from fslm.finetune import TrainOptions, finetune_pairs
from fslm.retrieve import Retriever
from fslm.retrieve.corpus import HELDOUT_KEEP, corpus_splits, reserved_items
from fslm.stack import retrieve_records
from fslm.tasks import Item, build_context, get_task, load_task

CORPUS = "tail"  # the passages `stack-retrieval-tail-raw` reads: the scorer is trained to read the same
MAX_LENGTH = 1024  # tokens per pair; longer pairs are skipped and counted in scorer.json, never cut
SEED = 0


def adapter_dir(recipe: Recipe) -> Path:
    return recipe.out / "trained_stack_scorer"


def stack_path(recipe: Recipe) -> Path:
    return retrieval_step.folder(recipe, CORPUS) / "stack-scorer.yaml"


def choice_tasks(recipe: Recipe) -> list[str]:
    from fslm.evaluate import parse_tasks

    return [t for t in parse_tasks(recipe.tasks) if get_task(t).kind != "generate"]


def training_pool(task: str, reserved) -> list[Item]:
    """The task's items a tail corpus may hold, in file order (train/dev splits, then the evaluation split's tail)."""
    pool = [item for split in corpus_splits(task) for item in load_task(task, split=split)]
    pool += select_items(task, None)[EVAL_RESERVE:]
    return [item for item in pool if not reserved.hits(item.id, item.question)]


def questions(recipe: Recipe) -> list[Item]:
    tasks = choice_tasks(recipe)
    share = -(-recipe.scorer_records // max(len(tasks), 1))
    reserved = reserved_items(HELDOUT_KEEP, EVAL_RESERVE)
    chosen: list[Item] = []
    for task in tasks:
        pool = training_pool(task, reserved)
        keep = set(random.Random(f"{SEED}:{task}").sample(range(len(pool)), min(share, len(pool))))
        chosen += [item for i, item in enumerate(pool) if i in keep]
    return chosen


def pairs(recipe: Recipe, items: list[Item]) -> list[dict]:
    """One pair per question, rendered by the code the evaluation runs: the retrieve stage's passages for its stack
    prompt (minus any passage holding the question itself), `raw_notes`, lm-eval's raw context, the gold continuation."""
    cfg = load_stack_config(retrieval_step.stack_path(recipe, CORPUS))
    stage = cfg.stages[0]
    retriever = Retriever.load(cfg.index_path(stage))
    records = retrieve_records(
        cfg, stage, retriever, [(stack_prompt(item), {}) for item in items], avoid=[item.question for item in items]
    )
    rows = []
    for item, record in zip(items, records, strict=True):
        gold = int(item.gold)
        context = raw_notes(cfg, {stage.name: record.output}) + build_context(
            item, (), choice=gold if item.contexts else None
        )
        rows.append({"id": item.id, "task": item.task, "context": context, "continuation": item.continuations[gold]})
    return rows


def _options(recipe: Recipe) -> TrainOptions:
    plan = read_json(recipe.out / "finetune.json")
    if plan is None:
        raise ConfigError(
            f"no {recipe.out / 'finetune.json'}: run the 'finetune' step first (the scorer uses its rank and targets)"
        )
    return TrainOptions(
        rank=plan["rank"],
        alpha=plan["alpha"],
        targets=tuple(plan["targets"]),
        epochs=recipe.epochs,
        max_length=MAX_LENGTH,
        save_dtype="float16",
        save_every=25,
    )


def _stack_yaml(recipe: Recipe) -> str:
    """The retrieval (tail) stack with the trained adapter on its answer stage. It sits beside that stack, so its
    relative index path holds; the adapter is named by absolute path (it lives in --out)."""
    cfg = load_stack_config(retrieval_step.stack_path(recipe, CORPUS))
    answer = cfg.stages[-1]
    stages = [
        *cfg.stages[:-1],
        answer.model_copy(update={"adapter": str(adapter_dir(recipe).resolve() / "adapters" / answer.name)}),
    ]
    return cfg.model_copy(
        update={
            "name": "retrieval-scorer",
            "stages": stages,
            "description": "BM25-retrieved solved questions -> answer adapter trained on raw scoring pairs",
        }
    ).to_yaml()


def _write_stack(recipe: Recipe) -> Path:
    text, path = _stack_yaml(recipe), stack_path(recipe)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, text)
    return path


def done(recipe: Recipe) -> bool:
    if not recipe.scorer_records:
        return True
    data = read_json(recipe.out / "scorer.json")
    adapter = adapter_dir(recipe) / "adapters" / "answer" / "adapter_model.safetensors"
    return (
        data is not None
        and data.get("records") == recipe.scorer_records
        and adapter.is_file()
        and retrieval_step.done(recipe)
        and stack_path(recipe).is_file()
        and stack_path(recipe).read_text(encoding="utf-8") == _stack_yaml(recipe)
    )


def run(recipe: Recipe, log=print) -> dict:
    if not recipe.scorer_records:
        return {}
    if not retrieval_step.done(recipe):
        raise ConfigError("the scorer reads the 'retrieval' step's tail index: run that step first (it takes seconds)")
    data = read_json(recipe.out / "scorer.json")
    if (
        data is not None
        and data.get("records") == recipe.scorer_records
        and (adapter_dir(recipe) / "adapters" / "answer").is_dir()
    ):
        _write_stack(recipe)  # trained in an earlier session, maybe on another machine: only the stack file was missing
        log(f"  adapter found in {adapter_dir(recipe)}; wrote {stack_path(recipe)}")
        return data
    items = questions(recipe)
    log(f"  {len(items)} choice questions from {len(choice_tasks(recipe))} tasks; retrieving their passages")
    rows = pairs(recipe, items)
    path = recipe.work / "scorer" / "pairs.jsonl"
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = load_stack_config(retrieval_step.stack_path(recipe, CORPUS))
    work = recipe.work / "finetune-scorer"
    options = _options(recipe)
    report = finetune_pairs(
        cfg,
        cfg.stages[-1].name,
        path,
        work,
        options,
        engine=load_engine(cfg.base_model, dtype="float32"),
        progress=lambda stage, step, total, loss: (
            log(f"    {stage} {step}/{total} loss {loss:.3f}") if step % 10 == 0 or step == total else None
        ),
    )
    tmp = adapter_dir(recipe).with_name(f".{adapter_dir(recipe).name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "adapters", tmp / "adapters")
    for name in ("train_log.json", "loss.png"):
        shutil.copyfile(work / name, tmp / name)
    shutil.rmtree(adapter_dir(recipe), ignore_errors=True)
    tmp.rename(adapter_dir(recipe))
    _write_stack(recipe)
    data = {
        "records": recipe.scorer_records,
        "pairs": len(rows),
        "per_task": dict(Counter(row["task"] for row in rows)),
        "corpus": CORPUS,
        "seed": SEED,
        "max_length": MAX_LENGTH,
        "rank": options.rank,
        "alpha": options.alpha,
        "targets": list(options.targets),
        "answer_stage": report.stages.get(cfg.stages[-1].name, {}),
    }
    write_json(recipe.out / "scorer.json", data)
    return data


__all__ = ["adapter_dir", "done", "pairs", "questions", "run", "stack_path", "training_pool"]
