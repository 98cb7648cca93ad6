"""Step `retrieval` (attempt 4): the intermediate text comes from a retriever, not from the 135M model.

Why (ANALYSIS.md points 2 and 8): the trained stages' texts relay the small model's own guess, usually a restatement
of one option, and the scorer copies it. Texts can only help if they carry information the scorer lacks. Here a BM25
retriever (fslm.retrieve) fetches the 3 most similar SOLVED questions from the train/dev splits and Alpaca, with
every evaluated item and the first 100 held-out items of every task left out of the corpus. Nothing is trained: the
two systems it adds isolate what the passages do.

- `stack-retrieval-raw`: the base model scoring lm-eval's raw context exactly as `base` does, with the passages in
  front (answer format "raw"): paired with `base`, the passages are the only change.
- `stack-retrieval`: the same passages read by the answer stage in its chat format, no adapter: paired with
  `base-stackformat` (the same format without passages).
- `stack-retrieval-tail-raw`: as `stack-retrieval-raw`, with a corpus that also holds each task's evaluation split
  past its first 300 items (`--eval-tail 300`; never evaluated: the recipe reads at most 300 per task), so every task,
  not only those with a train/dev split, finds solved questions of its own kind.
- `model-<ref>-retrieval-tail-raw`: the same passages read by a larger single model in its own format (the first
  `passage_readers` of --big-models): the like-for-like comparison for attempt 5 (scorer_step), which reads them too.

work/retrieval/{corpus.jsonl,index/,stack.yaml}             train/dev splits + Alpaca (fslm.retrieve; ~15 s)
work/retrieval/tail/{corpus.jsonl,index/,stack.yaml}        the same + evaluation-split tails (~40 s)
work/retrieval/tail/stack-<model>.yaml                      the tail stack on a larger base model (passage readers)
out/retrieval.json                                          passages per source, dropped counts, settings
"""

from __future__ import annotations

from pathlib import Path

from recipe import Recipe, read_json, slug

from fslm.config import load_stack_config, parse_stack_config
from fslm.evaluate.heldout import EVAL_RESERVE
from fslm.evaluate.store import write_atomic, write_json
from fslm.retrieve import Retriever, index_passages
from fslm.retrieve.corpus import HELDOUT_KEEP, write_corpus

K, MAX_CHARS = 3, 400  # fixed before any number was seen; not tuned
STAGE, LABEL = "related", "Related solved questions"


CORPORA = {"train-dev": None, "tail": EVAL_RESERVE}  # corpus name -> eval_tail


def folder(recipe: Recipe, corpus: str = "train-dev") -> Path:
    return recipe.work / "retrieval" / ("" if corpus == "train-dev" else corpus)


def stack_path(recipe: Recipe, corpus: str = "train-dev") -> Path:
    return folder(recipe, corpus) / "stack.yaml"


def reader_stack_path(recipe: Recipe, model: str) -> Path:
    return folder(recipe, "tail") / f"stack-{slug(model)}.yaml"


def passage_readers(recipe: Recipe) -> list[str]:
    return list(recipe.big_models[: recipe.passage_readers])


def stack_yaml(recipe: Recipe, base_model: str | None = None) -> str:
    """related (retrieve) -> the trained stack's answer stage prompt, no adapter, seeing the question and passages;
    on the student, or on `base_model` (a passage reader)."""
    cfg = recipe.stack_config()
    answer = cfg.stages[-1]
    data = {
        "name": "retrieval" if base_model is None else f"retrieval-{slug(base_model)}",
        "base_model": base_model or cfg.base_model,
        "description": f"{K} BM25-retrieved solved questions -> answer stage, no adapters",
        "stages": [
            {"name": STAGE, "label": LABEL, "retrieve": {"index": "index", "k": K, "max_chars": MAX_CHARS}},
            {
                **answer.model_dump(mode="json", exclude_none=True, exclude={"adapter", "teacher_prompt", "template"}),
                "sees": ["prompt", STAGE],
            },
        ],
    }
    return parse_stack_config(data, "retrieval stack").to_yaml()


def done(recipe: Recipe) -> bool:
    data = read_json(recipe.out / "retrieval.json")
    return (
        data is not None
        and set(data.get("corpora", {})) == set(CORPORA)
        and all(
            (folder(recipe, c) / "index" / "manifest.json").is_file()
            and stack_path(recipe, c).is_file()
            and stack_path(recipe, c).read_text(encoding="utf-8") == stack_yaml(recipe)
            for c in CORPORA
        )
        and all(_written(reader_stack_path(recipe, m), stack_yaml(recipe, m)) for m in passage_readers(recipe))
    )


def _written(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text(encoding="utf-8") == text


def run(recipe: Recipe, log=print) -> dict:
    corpora = {}
    for name, eval_tail in CORPORA.items():
        root = folder(recipe, name)
        corpus = root / "corpus.jsonl"
        what = "train/dev splits + Alpaca" + (f" + evaluation splits past item {eval_tail}" if eval_tail else "")
        log(f"  corpus {name!r}: {what} (held-out head {HELDOUT_KEEP} per task kept out) -> {corpus}")
        stats = write_corpus(corpus, alpaca_path=recipe.data, heldout_keep=HELDOUT_KEEP, eval_tail=eval_tail)
        retriever: Retriever = index_passages(corpus, root / "index")
        write_atomic(stack_path(recipe, name), stack_yaml(recipe))
        load_stack_config(stack_path(recipe, name))  # the written stack must load, index included
        corpora[name] = {
            "passages": len(retriever.passages),
            "eval_tail": eval_tail,
            "sources": {k: v.to_dict() for k, v in stats.items()},
            "index": retriever.manifest,
            "stack": str(stack_path(recipe, name)),
        }
        log(f"  indexed {len(retriever.passages)} passages")
    for model in passage_readers(recipe):  # the tail corpus's passages, read by a larger model
        write_atomic(reader_stack_path(recipe, model), stack_yaml(recipe, model))
        load_stack_config(reader_stack_path(recipe, model))
        log(f"  {model} reads the same passages: {reader_stack_path(recipe, model)}")
    data = {"corpora": corpora, "heldout_keep": HELDOUT_KEEP, "k": K, "max_chars": MAX_CHARS}
    write_json(recipe.out / "retrieval.json", data)
    return data
