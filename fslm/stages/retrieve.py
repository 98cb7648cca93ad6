"""The `retrieve` stage: its text is the k best passages (BM25, dense or hybrid, as its index was built) for the user
text it sees (no model runs)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from fslm.config import StackConfig, StageConfig
from fslm.retrieve import Hit, Retriever
from fslm.retrieve.recipe import RecipeRetriever, open_index
from fslm.stages.inputs import stage_labels, stage_user_text
from fslm.stages.records import StageRecord

NO_PASSAGE = "(no related passage found)"


def clip(text: str, max_chars: int) -> str:
    """`text` cut at the last word boundary within `max_chars`, marked with ' …' (never a silent cut)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    head = text[: max_chars - 2].rsplit(" ", 1)[0] or text[: max_chars - 2]
    return head + " …"


def passages_text(hits: Sequence[Hit], max_chars: int) -> str:
    """What a retrieve stage hands on: numbered passages, best first."""
    if not hits:
        return NO_PASSAGE
    return "\n".join(f"[{h.rank}] {clip(h.passage.text, max_chars)}" for h in hits)


def retrieve_records(
    cfg: StackConfig,
    stage: StageConfig,
    retriever: Retriever,
    inputs: Sequence[tuple[str, Mapping[str, str]]],
    avoid: Sequence[str] | None = None,
    overlap_with: Sequence[str] | None = None,
) -> list[StageRecord]:
    """A retrieve stage over (prompt, earlier texts) pairs: its query is the user text it sees (no chat template),
    its text the passages found. Distillation calls this too (with `avoid` = each record's own prompt, so a
    training record never reads its own answer), and later stages train on the passages they will read."""
    assert stage.retrieve is not None
    labels = stage_labels(cfg)
    queries = [stage_user_text(stage, prompt, outputs, labels) for prompt, outputs in inputs]
    t0 = time.perf_counter()
    found = retriever.search(queries, k=stage.retrieve.k, avoid=avoid, overlap_with=overlap_with)
    seconds = round((time.perf_counter() - t0) / max(1, len(queries)), 4)
    return [
        StageRecord(
            stage.name,
            query,
            passages_text(hits, stage.retrieve.max_chars),
            0,
            0,
            seconds,
            None,
            "retrieved",
            tuple(h.passage.id for h in hits),
            kind="retrieve",
            when=stage.when,
        )
        for query, hits in zip(queries, found, strict=True)
    ]


def load_retrievers(cfg: StackConfig) -> dict[str, Retriever | RecipeRetriever]:
    """Each retrieve stage's index; a folder holding a recipe (fslm/retrieve/recipe.py) builds on first search."""
    return {s.name: open_index(cfg.index_path(s)) for s in cfg.stages if s.is_retrieval}  # type: ignore[arg-type]
