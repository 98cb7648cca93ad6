"""BM25 vs dense vs hybrid retrieval on held-out items only: does a top-3 passage come from the item's own task?

A cheap proxy for "the passages are related", needing no model and no labels beyond the passage ids: for each task's
first N held-out items (the ones `fslm retrieve corpus --heldout-keep N` kept out of the corpus, and that settings are
picked on), the query is the prompt a stack receives (`stack_prompt`: lead, question, lettered options), and

  recall@k     share of items with at least one of the k passages from the same task
  precision@k  share of the k passages from the same task (averaged over items)

TruthfulQA mc1 and mc2 count as one task (their questions are the same; the corpus keeps mc1's copy). An item whose
own id comes back is counted separately (`own`): it must be 0, since the corpus was built without these items.

    fslm retrieve corpus --heldout-keep 100 --eval-tail 300 --out /tmp/rt/corpus.jsonl
    fslm retrieve index /tmp/rt/corpus.jsonl --out /tmp/rt/hybrid --kind hybrid
    python benchmarks/bench_retrieve.py /tmp/rt/hybrid --out benchmarks/results/retrieve/heldout.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fslm.cpu import cpu_model
from fslm.errors import InputError
from fslm.evaluate.prompts import stack_prompt
from fslm.retrieve import Retriever
from fslm.retrieve.index import MODES
from fslm.tasks import list_tasks
from fslm.tasks.splits import heldout_items


def family(name: str) -> str:
    return "truthfulqa" if name.startswith("truthfulqa") else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path, help="an index folder (a hybrid one measures all three modes)")
    parser.add_argument("--keep", type=int, default=100, help="held-out items per task (as --heldout-keep)")
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    retriever = Retriever.load(args.index)
    items = {}
    for task in list_tasks():
        try:
            items[task] = heldout_items(task)[: args.keep]
        except InputError:
            continue
    report: dict = {"index": str(args.index), "kind": retriever.kind, "k": args.k, "cpu": cpu_model(), "modes": {}}
    for mode in MODES[retriever.kind]:
        t0 = time.perf_counter()
        rows, own = {}, 0
        for task, chosen in items.items():
            hits = retriever.search([stack_prompt(it) for it in chosen], args.k, mode=mode)
            same = [[family(h.passage.id.split("/")[0]) == family(task) for h in row] for row in hits]
            own += sum(h.passage.id == it.id for it, row in zip(chosen, hits, strict=True) for h in row)
            rows[task] = {
                "items": len(chosen),
                "recall": round(sum(any(s) for s in same) / len(chosen), 4),
                "precision": round(sum(sum(s) / args.k for s in same) / len(chosen), 4),
            }
        macro = {m: round(sum(r[m] for r in rows.values()) / len(rows), 4) for m in ("recall", "precision")}
        seconds = round(time.perf_counter() - t0, 1)
        report["modes"][mode] = {"tasks": rows, "macro": macro, "own_item_hits": own, "search_seconds": seconds}
        print(f"{mode}: macro recall@{args.k} {macro['recall']:.3f}, precision {macro['precision']:.3f}, own {own}")
    print("| task | items | " + " | ".join(f"{m} R@{args.k}" for m in report["modes"]) + " |")
    for task in items:
        cells = " | ".join(f"{report['modes'][m]['tasks'][task]['recall']:.2f}" for m in report["modes"])
        print(f"| {task} | {len(items[task])} | {cells} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
