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
from fslm.tasks import Item, get_task, list_tasks, load_task

ALPACA = "alpaca"
HELDOUT_KEEP = 100  # held-out items per task that stay out of the corpus (selection reads the first 16..100)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


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
        self.questions.update(_norm(it.question) for it in items if it.question.strip())

    def hits(self, pid: str, question: str) -> bool:
        return pid in self.ids or (bool(question.strip()) and _norm(question) in self.questions)


def reserved_items(heldout_keep: int = HELDOUT_KEEP) -> Reserved:
    """Every task's whole evaluation split, plus the head of its held-out pool."""
    from fslm.evaluate.heldout import heldout_items

    reserved = Reserved()
    for task in list_tasks():
        reserved.add(load_task(task))
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
    return Passage(item.id, f"{lead}{item.question.strip()}\nAnswer: {answer.strip()}", item.meta.get("source", item.task))


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
    reserved: Reserved | None = None,
) -> tuple[list[Passage], dict[str, SourceStats]]:
    """Passages from `sources` (task names and/or "alpaca"; default `default_sources()`), decontaminated."""
    from fslm.distill.data import load_instructions

    sources = list(sources) if sources is not None else default_sources()
    for source in sources:
        if source != ALPACA:
            get_task(source)  # unknown names fail before any loading
            if not corpus_splits(source):
                raise InputError(f"task {source!r} has only its evaluation split in the data; nothing to put in a corpus")
    reserved = reserved if reserved is not None else reserved_items(heldout_keep)
    passages: list[Passage] = []
    texts: set[str] = set()
    stats: dict[str, SourceStats] = {}

    def offer(source: str, passage: Passage, question: str) -> None:
        st = stats.setdefault(source, SourceStats())
        st.read += 1
        if reserved.hits(passage.id, question):
            st.dropped_reserved += 1
        elif _norm(passage.text) in texts:
            st.dropped_duplicate += 1
        else:
            texts.add(_norm(passage.text))
            passages.append(passage)
            st.kept += 1

    for source in sources:
        if source == ALPACA:
            records, _ = load_instructions(alpaca_path)
            for rec in records:
                if rec.gold is None:
                    continue
                offer(ALPACA, Passage(f"alpaca/{rec.id}", f"{rec.prompt}\nAnswer: {rec.gold}", f"alpaca:{rec.index}"), rec.prompt)
            continue
        for split in corpus_splits(source):
            for item in load_task(source, split=split):
                offer(source, item_passage(item), item.question)
    return passages, stats


def write_corpus(out: str | Path, sources: Sequence[str] | None = None, *, alpaca_path: str | Path | None = None,
                 heldout_keep: int = HELDOUT_KEEP) -> dict[str, SourceStats]:
    """Python twin of `fslm retrieve corpus`: build the passages and write them as JSONL (atomically)."""
    from fslm.retrieve.index import write_passages

    passages, stats = build_corpus(sources, alpaca_path=alpaca_path, heldout_keep=heldout_keep)
    write_passages(passages, out)
    return stats
