"""GSM8K with a calculator stage: the training records, sampled reproducibly.

    python benchmarks/bench_gsm8k.py records --n 3000 --seed 0 --out gsm8k-train-3000.jsonl

writes `n` of the records `fslm.distill.gsm8k.build_records` keeps on GSM8K train (every one the safe calculator
checks against the gold answer), drawn with `random.Random(seed)` and kept in file order. The rest of the recipe is
library verbs (benchmarks/results/stacks/gsm8k/README.md):

    fslm finetune --stack benchmarks/experiments/stacks/gsm8k-expression.yaml --data gsm8k-train-3000.jsonl \
        --rank 4 --alpha 8 --out trained
    fslm eval --stack benchmarks/experiments/stacks/gsm8k-tool.yaml --tasks gsm8k --limit 300 --out runs/gsm8k-tool
    fslm compare runs/gsm8k-tool ../fslm_repro/runs/base --out compare-vs-base
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from fslm.distill.gsm8k import build_records
from fslm.io import write_jsonl
from fslm.tasks.registry import load_task


def sample_records(n: int, seed: int) -> tuple[list[dict], dict]:
    records, dropped = build_records(load_task("gsm8k", split="train"))
    if n > len(records):
        raise ValueError(f"--n {n} is more than the {len(records)} records kept")
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep], {"kept": len(records), "dropped": dict(dropped), "sampled": n, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("records", help="sampled calculator-target records for fslm finetune --data")
    r.add_argument("--n", type=int, default=3000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        rows, stats = sample_records(args.n, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_jsonl(args.out, rows)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
