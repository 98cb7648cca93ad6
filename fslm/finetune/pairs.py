"""Raw-scoring pairs: choice questions rendered exactly as `--answer-format raw-adapter` scores them, as training data
for `finetune_pairs`.

An answer stage trained in its chat format learns to reply, but the raw formats score each option's continuation
after lm-eval's raw context. These pairs make the training loss that score: for each question, the retrieve stage's
passages (never the question's own passage), the notes line the evaluation writes (`raw_notes`), the raw context, and
the gold option's continuation.

Questions come only from items a tail corpus may hold (train/dev splits, and the evaluation split past the first
`eval_reserve` items), minus every evaluated item and the head of the held-out pool, so neither test nor held-out
items are ever trained on. This module renders with `fslm.evaluate.prompts` (an arrow up the module map) on purpose:
pairs rendered by any other code would train a format the evaluation does not score.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fslm.config import StackConfig, load_stack_config
from fslm.errors import ConfigError
from fslm.evaluate.prompts import raw_notes, stack_prompt
from fslm.io import write_jsonl
from fslm.retrieve import Retriever
from fslm.retrieve.corpus import HELDOUT_KEEP, Reserved, corpus_splits, reserved_items
from fslm.stages.retrieve import retrieve_records
from fslm.tasks import Item, build_context, get_task, load_task
from fslm.tasks.splits import EVAL_RESERVE, parse_tasks, select_items


@dataclass
class PairsReport:
    out: str
    pairs: int
    per_task: dict[str, int] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def choice_tasks(tasks: str | Sequence[str] | None = None) -> list[str]:
    """The multiple-choice tasks among `tasks` (None: every task): generation tasks have no option to score."""
    return [t for t in parse_tasks(tasks) if get_task(t).kind != "generate"]


def training_pool(
    task: str, reserved: Reserved, eval_reserve: int = EVAL_RESERVE, *, eval_tail: bool = True
) -> list[Item]:
    """The task's items a tail corpus may hold, in file order: its train/dev splits, then (with `eval_tail`) its
    evaluation split past the first `eval_reserve` items; nothing `reserved` names."""
    pool = [item for split in corpus_splits(task) for item in load_task(task, split=split)]
    if eval_tail:
        pool += select_items(task, None)[eval_reserve:]
    return [item for item in pool if not reserved.hits(item.id, item.question)]


def pick_questions(
    records: int,
    tasks: str | Sequence[str] | None = None,
    *,
    seed: int = 0,
    heldout_keep: int = HELDOUT_KEEP,
    eval_reserve: int = EVAL_RESERVE,
    dev_only: bool = False,
) -> list[Item]:
    """An equal share of `records` from each choice task's pool, drawn with `seed` (the same data, the same draw).
    `dev_only`: train/dev splits alone, minus every question of an evaluation split, not only its first items."""
    names = choice_tasks(tasks)
    if not names:
        raise ConfigError("no multiple-choice task to draw questions from")
    if dev_only and not all(corpus_splits(task) for task in names):
        with_dev = [t for t in choice_tasks(None) if corpus_splits(t)]
        raise ConfigError(
            f"--tasks: {', '.join(t for t in names if not corpus_splits(t))} has no train/dev split (its only split "
            f"is evaluated); tasks with one: {', '.join(with_dev)}"
        )
    share = -(-records // len(names))
    reserved = reserved_items(heldout_keep, None if dev_only else eval_reserve)
    chosen: list[Item] = []
    for task in names:
        pool = training_pool(task, reserved, eval_reserve, eval_tail=not dev_only)
        keep = set(random.Random(f"{seed}:{task}").sample(range(len(pool)), min(share, len(pool))))
        chosen += [item for i, item in enumerate(pool) if i in keep]
    return chosen


def build_pairs(cfg: StackConfig, items: Sequence[Item]) -> list[dict]:
    """One {id, task, context, continuation} pair per question. When the stack's first stage retrieves (e.g.
    retrieve -> answer), its passages come first, as the evaluation's notes line; otherwise the raw context alone (a
    scorer that reads the question as the base model does)."""
    rows = []
    for row in build_choice_rows(cfg, items):
        gold = row["gold"]
        rows.append(
            {
                "id": row["id"],
                "task": row["task"],
                "context": row["contexts"][gold],
                "continuation": row["continuations"][gold],
            }
        )
    return rows


def build_choice_rows(cfg: StackConfig, items: Sequence[Item]) -> list[dict]:
    """Every option of each question as the raw formats score it: {id, task, gold, contexts, continuations}, one
    context per option (the same text unless the item has per-option contexts), notes as in `build_pairs`."""
    stage = cfg.stages[0]
    notes = [""] * len(items)
    if stage.is_retrieval:
        retriever = Retriever.load(cfg.index_path(stage))
        records = retrieve_records(
            cfg, stage, retriever, [(stack_prompt(item), {}) for item in items], avoid=[item.question for item in items]
        )
        notes = [raw_notes(cfg, {stage.name: record.output}) for record in records]
    rows = []
    for item, note in zip(items, notes, strict=True):
        choices = range(len(item.continuations))
        contexts = [note + build_context(item, (), choice=i if item.contexts else None) for i in choices]
        rows.append(
            {
                "id": item.id,
                "task": item.task,
                "gold": int(item.gold),
                "contexts": contexts,
                "continuations": list(item.continuations),
            }
        )
    return rows


def write_scoring_pairs(
    stack: str | Path | StackConfig,
    out: str | Path,
    records: int,
    tasks: str | Sequence[str] | None = None,
    *,
    seed: int = 0,
    heldout_keep: int = HELDOUT_KEEP,
    eval_reserve: int = EVAL_RESERVE,
) -> PairsReport:
    """Draw the questions, render their pairs and write them as JSONL (atomically): the input of
    `fslm.finetune.finetune_pairs`. Rebuilt identically from the same data in seconds, so there is nothing to resume."""
    cfg = stack if isinstance(stack, StackConfig) else load_stack_config(stack)
    items = pick_questions(records, tasks, seed=seed, heldout_keep=heldout_keep, eval_reserve=eval_reserve)
    rows = build_pairs(cfg, items)
    write_jsonl(out, rows)
    return PairsReport(str(out), len(rows), dict(Counter(r["task"] for r in rows)), seed)


__all__ = [
    "PairsReport",
    "build_choice_rows",
    "build_pairs",
    "choice_tasks",
    "pick_questions",
    "training_pool",
    "write_scoring_pairs",
]
