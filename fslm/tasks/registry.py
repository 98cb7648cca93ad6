"""Task registry: which loader and splits serve each task name, plus few-shot sampling."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from fslm.errors import FslmError
from fslm.settings import get_settings
from fslm.tasks import jsonl_tasks as J
from fslm.tasks import text_tasks as T
from fslm.tasks.alpaca import ALPACA_TEST_TAIL, load_alpaca
from fslm.tasks.base import Item, TaskSpec

Loader = Callable[[str, Path, str], list[Item]]

_MC = "multiple_choice"


def _spec(name: str, kind: str, split: str, fewshot: str | None, splits: tuple[str, ...], what: str) -> TaskSpec:
    return TaskSpec(name=name, kind=kind, split=split, fewshot_split=fewshot, description=what, splits=splits)  # type: ignore[arg-type]


_ENTRIES: list[tuple[TaskSpec, Loader]] = [
    (
        _spec(
            "arc_easy",
            _MC,
            "test",
            None,
            ("test",),
            "ARC-Easy grade-school science questions (MosaicML converted copy)",
        ),
        J.load_arc_easy,
    ),
    (
        _spec(
            "arc_challenge",
            _MC,
            "test",
            "validation",
            ("test", "validation"),
            "ARC-Challenge hard grade-school science questions (AI2 jsonl)",
        ),
        J.load_arc_challenge,
    ),
    (
        _spec(
            "hellaswag",
            _MC,
            "validation",
            None,
            ("validation",),
            "HellaSwag commonsense sentence completion (llama.cpp text layout)",
        ),
        T.load_hellaswag,
    ),
    (
        _spec(
            "mmlu",
            _MC,
            "test",
            "dev",
            ("test", "dev"),
            "MMLU 57-subject knowledge questions, scored on the letters A-D",
        ),
        T.load_mmlu,
    ),
    (
        _spec(
            "truthfulqa_mc1",
            _MC,
            "validation",
            None,
            ("validation",),
            "TruthfulQA, one true answer among the choices (6-shot QA primer)",
        ),
        T.load_truthfulqa,
    ),
    (
        _spec(
            "truthfulqa_mc2",
            _MC,
            "validation",
            None,
            ("validation",),
            "TruthfulQA, several true answers; score = normalised probability mass on gold_set",
        ),
        T.load_truthfulqa,
    ),
    (
        _spec(
            "winogrande",
            _MC,
            "validation",
            None,
            ("validation",),
            "WinoGrande pronoun resolution with lm-eval partial scoring (per-choice contexts)",
        ),
        J.load_winogrande,
    ),
    (
        _spec(
            "piqa",
            _MC,
            "validation",
            None,
            ("validation",),
            "PIQA physical commonsense: pick the better of two solutions",
        ),
        J.load_piqa,
    ),
    (
        _spec(
            "boolq",
            _MC,
            "validation",
            None,
            ("validation",),
            "BoolQ yes/no questions about a passage (MosaicML converted copy)",
        ),
        J.load_boolq,
    ),
    (
        _spec(
            "openbookqa",
            _MC,
            "test",
            "train",
            ("test", "validation", "train"),
            "OpenBookQA elementary science; the question stem is completed by a choice",
        ),
        T.load_openbookqa,
    ),
    (
        _spec(
            "gsm8k",
            "generate",
            "test",
            "train",
            ("test", "train"),
            "GSM8K grade-school math word problems; gold = the final number",
        ),
        J.load_gsm8k,
    ),
    (
        TaskSpec(
            name="alpaca",
            kind="generate",
            split="test",
            fewshot_split=None,
            description=f"Alpaca instruction following (the last {ALPACA_TEST_TAIL} unique records of "
            "alpaca/random_9k.json; training reads only the records before them); gold = the reference output",
            splits=("test",),
            in_all=False,
            free_text=True,
        ),
        load_alpaca,
    ),
]

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec, _ in _ENTRIES}
_LOADERS: dict[str, Loader] = {spec.name: loader for spec, loader in _ENTRIES}
_ALIASES = {"dev": "validation", "validation": "dev", "val": "validation", "valid": "validation"}


def list_tasks(*, every: bool = False) -> list[str]:
    """The tasks `--tasks all` means (the benchmarks); `every=True` adds the opt-in ones (alpaca)."""
    return [name for name, spec in TASKS.items() if every or spec.in_all]


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise FslmError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def _resolve_split(spec: TaskSpec, split: str | None) -> str:
    if split is None:
        return spec.split
    if split in spec.splits:
        return split
    alias = _ALIASES.get(split)
    if alias in spec.splits:
        return alias
    if split == "val" and "dev" in spec.splits:
        return "dev"
    raise FslmError(f"task {spec.name!r} has no split {split!r} in the data; available: {', '.join(spec.splits)}")


def load_task(
    name: str, *, data_dir: Path | None = None, limit: int | None = None, split: str | None = None
) -> list[Item]:
    """Items of ``name`` in file order (the task's eval split unless ``split`` is given).

    ``limit`` keeps the first N. Raises FslmError for an unknown task/split and DataError
    for a missing data dir/file or a malformed record (naming file and line)."""
    spec = get_task(name)
    resolved = _resolve_split(spec, split)
    if limit is not None and limit < 0:
        raise FslmError(f"limit must be >= 0, got {limit}")
    root = Path(data_dir) if data_dir is not None else get_settings().data_dir
    items = _LOADERS[name](name, root, resolved)
    return items if limit is None else items[:limit]


def normalize_text(text: str) -> str:
    """Whitespace and case aside: how two copies of one question are recognised across splits and sources."""
    return " ".join(text.split()).casefold()


def without_overlap(pool: list[Item], reserved: list[Item]) -> list[Item]:
    """`pool` minus the items that share an id or a question text (whitespace and case aside) with `reserved`: the
    same question copied into two splits must not be both an example and a test item."""
    ids = {it.id for it in reserved}
    questions = {normalize_text(it.question) for it in reserved if it.question.strip()}
    return [
        it
        for it in pool
        if it.id not in ids and (not it.question.strip() or normalize_text(it.question) not in questions)
    ]


def fewshot_items(
    name: str, k: int, *, seed: int = 1234, data_dir: Path | None = None, subject: str | None = None
) -> list[Item]:
    """k few-shot examples from the task's fewshot split (never from the eval split).

    Examples whose id or question text also occurs in the eval split are excluded.
    Without ``subject``: a ``random.Random(seed).sample`` of the pool (lm-eval's default
    sampler). With ``subject`` (mmlu): the first k examples of that subject, lm-eval's
    ``first_n`` sampler for MMLU."""
    spec = get_task(name)
    if k < 0:
        raise FslmError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    if spec.fewshot_split is None:
        raise FslmError(
            f"task {name!r} has no train/dev split in the data for few-shot examples "
            f"(only its eval split {spec.split!r}); use k=0"
        )
    pool = load_task(name, data_dir=data_dir, split=spec.fewshot_split)
    pool = without_overlap(pool, load_task(name, data_dir=data_dir))
    if subject is not None:
        subjects = sorted({it.meta.get("subject", "") for it in pool} - {""})
        pool = [it for it in pool if it.meta.get("subject") == subject]
        if not pool:
            raise FslmError(
                f"no few-shot examples for subject {subject!r} in task {name!r}; known: {', '.join(subjects) or 'none'}"
            )
        if k > len(pool):
            raise FslmError(f"asked for {k} few-shot examples but subject {subject!r} has {len(pool)}")
        return pool[:k]
    if k > len(pool):
        raise FslmError(f"asked for {k} few-shot examples but {name!r} split {spec.fewshot_split!r} has {len(pool)}")
    return random.Random(seed).sample(pool, k)
