"""Which items a run reads: the evaluation's items (`select_items`), held-out items for choosing settings, and the
few-shot pools, in ONE place below every consumer (evaluate, retrieve, finetune, experiment), so none of them imports
another to learn a split.

`--split heldout`: items an evaluation never reads, for choosing between settings without touching test items.
Picking a variant by its test score tunes on the test set. Held-out items come from the task's own dev/train split
when the data has one (ARC-Challenge validation, MMLU dev, OpenBookQA validation, GSM8K train); tasks whose only
split is the one evaluated (BoolQ, HellaSwag, PIQA, ...) give the tail of that split, past the first
`EVAL_RESERVE` items, which no `--limit <= EVAL_RESERVE` run reads. Either way the pool is taken from the END of the
file (first item = last line), so runs that train on the head of a dev split do not overlap it, and items whose
question text also occurs in the reserved evaluation items are dropped.

Few-shot examples for those single-split tasks come from the other end of the tail: the FEWSHOT_TAIL items right
after the reserve (`tail_fewshot_pool`), which the held-out pool leaves out, so the three never meet.
"""

from __future__ import annotations

from collections.abc import Sequence

from fslm.errors import InputError
from fslm.tasks.base import Item
from fslm.tasks.registry import get_task, list_tasks, load_task, without_overlap

HELDOUT = "heldout"
EVAL_RESERVE = 300  # the first N items of every eval split are reserved for evaluation (the full scale's limit)
FEWSHOT_TAIL = 100  # single-split tasks: the items right after the reserve are their few-shot pool
_DEV_SPLITS = ("validation", "dev", "train")  # preferred order when a task has several


def heldout_source(task: str) -> tuple[str, int]:
    """(split, items skipped at its head) that `heldout_items(task)` reads from."""
    spec = get_task(task)
    for split in _DEV_SPLITS:
        if split in spec.splits and split != spec.split:
            return split, 0
    return spec.split, EVAL_RESERVE


def heldout_items(task: str, reserved: list[Item] | None = None) -> list[Item]:
    """The task's held-out pool, last file line first. `reserved`: the eval items to stay disjoint from
    (default: the first EVAL_RESERVE items of the eval split, as `fslm eval --limit` reads them)."""
    split, skip = heldout_source(task)
    items = select_items(task, None, split)
    if skip and len(items) <= skip:
        raise InputError(
            f"{task}: its only split {split!r} has {len(items)} items, all reserved for evaluation "
            f"(the first {EVAL_RESERVE}); it has no held-out items"
        )
    reserved = select_items(task, EVAL_RESERVE) if reserved is None else reserved
    if skip:  # the few-shot pool sits right after the reserve; held-out items come from the other end
        reserved = reserved + items[skip : skip + FEWSHOT_TAIL]
        skip += FEWSHOT_TAIL
    return without_overlap(items[skip:], reserved)[::-1]


def tail_fewshot_pool(task: str) -> list[Item]:
    """Few-shot examples for a task whose only split is the one evaluated: its items EVAL_RESERVE ..
    EVAL_RESERVE + FEWSHOT_TAIL in evaluation order, which no `--limit <= EVAL_RESERVE` run reads and which the
    held-out pool (taken from the far end) leaves out; items sharing a question with the reserve are dropped."""
    items = select_items(task, None)
    if len(items) < EVAL_RESERVE + FEWSHOT_TAIL:
        raise InputError(
            f"{task}: no train/dev split and only {len(items)} items in {get_task(task).split!r}, too few "
            f"to keep {FEWSHOT_TAIL} few-shot examples past the first {EVAL_RESERVE}; use --num-fewshot 0"
        )
    return without_overlap(items[EVAL_RESERVE : EVAL_RESERVE + FEWSHOT_TAIL], items[:EVAL_RESERVE])


def parse_tasks(tasks: str | Sequence[str] | None) -> list[str]:
    """Task names from a comma list (or a list); None/"all" = every benchmark (`list_tasks()`: opt-in tasks such as
    alpaca only when named). Unknown names list the known ones."""
    if tasks is None or tasks == "all":
        return list_tasks()
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise InputError(f"no tasks given; known tasks: {', '.join(list_tasks(every=True))}")
    for name in names:
        get_task(name)  # raises with the list of known tasks
    return list(dict.fromkeys(names))


def _spread_subjects(items: list[Item]) -> list[Item]:
    """MMLU files are grouped by subject; interleave subjects so that a --limit covers all 57 of them."""
    by_subject: dict[str, list[Item]] = {}
    for item in items:
        by_subject.setdefault(item.meta.get("subject", ""), []).append(item)
    out: list[Item] = []
    queues = list(by_subject.values())
    depth = max((len(q) for q in queues), default=0)
    for i in range(depth):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def select_items(
    task: str, limit: int | None = None, split: str | None = None, notes: list[str] | None = None
) -> list[Item]:
    """The items a run evaluates: file order (MMLU: subjects interleaved), first `limit`. The lm-eval task files
    are written in the same order, so `lm_eval --limit N` scores the same items."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if split == HELDOUT:
        items = heldout_items(task)
        if limit is not None and limit > len(items) and notes is not None:
            notes.append(
                f"{task}: --limit {limit} is larger than its {len(items)} held-out items; using all {len(items)}"
            )
        return items if limit is None else items[:limit]
    items = load_task(task, split=split)
    if task == "mmlu":
        items = _spread_subjects(items)
    if limit is not None and limit > len(items) and notes is not None:
        notes.append(
            f"{task}: --limit {limit} is larger than the {len(items)} items in its split; using all {len(items)}"
        )
    return items if limit is None else items[:limit]
