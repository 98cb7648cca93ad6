"""Passages from solved train/dev questions and Alpaca records, kept clear of every item a setting is judged on.

A retrieval corpus built from benchmark data must not contain the items it will be scored on, nor the held-out items
settings are picked on (`fslm eval --split heldout`). `build_corpus` drops any record that shares an id or a question
text (whitespace and case aside) with any evaluation item of ANY task, or with the first `heldout_keep` held-out items
of any task, and reports how many it dropped and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fslm.errors import InputError
from fslm.retrieve.index import Passage
from fslm.tasks import Item, get_task, list_tasks, load_task, normalize_text

ALPACA = "alpaca"
HELDOUT_KEEP = 100  # held-out items per task that stay out of the corpus (selection reads the first 16..100)


def corpus_splits(task: str) -> list[str]:
    """The splits of `task` a corpus may read: every split but the evaluated one."""
    spec = get_task(task)
    return [s for s in spec.splits if s != spec.split]


def default_sources() -> list[str]:
    """Every task with a train/dev split, then Alpaca."""
    return [t for t in list_tasks() if corpus_splits(t)] + [ALPACA]


@dataclass
class Reserved:
    """Ids and question texts no passage may share."""

    ids: set[str] = field(default_factory=set)
    questions: set[str] = field(default_factory=set)

    def add(self, items: Sequence[Item]) -> None:
        self.ids.update(it.id for it in items)
        self.questions.update(normalize_text(it.question) for it in items if it.question.strip())

    def hits(self, pid: str, question: str) -> bool:
        return pid in self.ids or (bool(question.strip()) and normalize_text(question) in self.questions)


def reserved_items(heldout_keep: int = HELDOUT_KEEP, eval_reserve: int | None = None) -> Reserved:
    """Every task's evaluation split (with `eval_reserve`: only its first N items in evaluation order, what
    `fslm eval --limit N` reads), plus the head of its held-out pool."""
    from fslm.tasks.splits import heldout_items, select_items

    reserved = Reserved()
    for task in list_tasks():
        reserved.add(load_task(task) if eval_reserve is None else select_items(task, eval_reserve))
    for task in list_tasks():
        try:
            reserved.add(heldout_items(task)[:heldout_keep])
        except InputError:  # a task whose only split is all evaluation reserve has no held-out items
            continue
    return reserved


def item_passage(item: Item) -> Passage:
    """A solved question as one passage: the question, then its gold answer (a worked solution for GSM8K)."""
    if item.choices:
        answer = item.choices[int(item.gold)].strip()
    else:
        answer = item.meta.get("solution") or str(item.gold)
    subject = item.meta.get("subject")
    lead = f"({subject.replace('_', ' ')}) " if subject else ""
    return Passage(
        item.id, f"{lead}{item.question.strip()}\nAnswer: {answer.strip()}", item.meta.get("source", item.task)
    )


@dataclass
class SourceStats:
    read: int = 0
    kept: int = 0
    dropped_reserved: int = 0  # shares an id or question with an evaluation or held-out item
    dropped_duplicate: int = 0  # same text as a passage already kept

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def build_corpus(
    sources: Sequence[str] | None = None,
    *,
    alpaca_path: str | Path | None = None,
    heldout_keep: int = HELDOUT_KEEP,
    eval_tail: int | None = None,
    reserved: Reserved | None = None,
) -> tuple[list[Passage], dict[str, SourceStats]]:
    """Passages from `sources` (task names and/or "alpaca"; default `default_sources()`, or with `eval_tail` every
    task and Alpaca), decontaminated. `eval_tail=N`: also each task's evaluation split past its first N items in
    evaluation order, which `fslm eval --limit <= N` never reads (the recipe evaluates 300 per task at most); only
    those first N are then reserved from the evaluation splits."""
    from fslm.tasks.instructions import load_instructions
    from fslm.tasks.splits import select_items

    if eval_tail is not None and eval_tail < 1:
        raise InputError(f"eval_tail must be >= 1 (the evaluated items per task to keep out), got {eval_tail}")
    if sources is None:
        sources = (list_tasks() + [ALPACA]) if eval_tail is not None else default_sources()
    sources = list(sources)
    for source in sources:
        if source != ALPACA:
            get_task(source)  # unknown names fail before any loading
            if not corpus_splits(source) and eval_tail is None:
                raise InputError(
                    f"task {source!r} has only its evaluation split in the data; nothing to put in a corpus "
                    "(unless its items past the evaluated ones are allowed: eval_tail / --eval-tail)"
                )
    reserved = reserved if reserved is not None else reserved_items(heldout_keep, eval_tail)
    passages: list[Passage] = []
    texts: set[str] = set()
    stats: dict[str, SourceStats] = {}

    def offer(source: str, passage: Passage, question: str) -> None:
        st = stats.setdefault(source, SourceStats())
        st.read += 1
        if reserved.hits(passage.id, question):
            st.dropped_reserved += 1
        elif normalize_text(passage.text) in texts:
            st.dropped_duplicate += 1
        else:
            texts.add(normalize_text(passage.text))
            passages.append(passage)
            st.kept += 1

    for source in sources:
        if source == ALPACA:
            records, _ = load_instructions(alpaca_path)
            for rec in records:
                if rec.gold is None:
                    continue
                offer(
                    ALPACA,
                    Passage(f"alpaca/{rec.id}", f"{rec.prompt}\nAnswer: {rec.gold}", f"alpaca:{rec.index}"),
                    rec.prompt,
                )
            continue
        for split in corpus_splits(source):
            for item in load_task(source, split=split):
                offer(source, item_passage(item), item.question)
        if eval_tail is not None:
            for item in select_items(source, None)[eval_tail:]:
                offer(source, item_passage(item), item.question)
    return passages, stats


def write_corpus(
    out: str | Path,
    sources: Sequence[str] | None = None,
    *,
    alpaca_path: str | Path | None = None,
    heldout_keep: int = HELDOUT_KEEP,
    eval_tail: int | None = None,
) -> dict[str, SourceStats]:
    """Python twin of `fslm retrieve corpus`: build the passages and write them as JSONL (atomically)."""
    from fslm.retrieve.index import write_passages

    passages, stats = build_corpus(sources, alpaca_path=alpaca_path, heldout_keep=heldout_keep, eval_tail=eval_tail)
    write_passages(passages, out)
    return stats
