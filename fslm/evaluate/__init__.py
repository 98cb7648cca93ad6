"""Evaluation: score any system (a model, a stack, a stack without adapters) on the benchmark tasks.

>>> from fslm.evaluate import evaluate, load_system, compare
>>> summary = evaluate("smollm2-135m", ["arc_easy", "hellaswag"], limit=50, out_dir="runs/base")
>>> summary.tasks["arc_easy"]["acc"], summary.macro_acc

Outputs per run folder: items.jsonl (one row per item, raw choice scores), summary.json, table.md, chart.png.
See docs/evaluate.md for the row format and how a stack answers a multiple-choice item.
"""

from fslm.evaluate.compare import compare
from fslm.evaluate.prompts import stack_continuations, stack_prompt
from fslm.evaluate.run import Summary, evaluate, make_row
from fslm.evaluate.scoring import extract_number, mc2_mass, numbers_match, score_choices
from fslm.evaluate.stats import bootstrap_ci, macro_bootstrap_ci, paired_bootstrap
from fslm.evaluate.store import compress_run
from fslm.evaluate.systems import ModelSystem, Outcome, StackSystem, System, load_system
from fslm.tasks.splits import parse_tasks, select_items  # the items a run reads (one home: fslm.tasks.splits)

__all__ = [
    "ModelSystem",
    "Outcome",
    "StackSystem",
    "Summary",
    "System",
    "bootstrap_ci",
    "compare",
    "compress_run",
    "evaluate",
    "extract_number",
    "load_system",
    "macro_bootstrap_ci",
    "make_row",
    "mc2_mass",
    "numbers_match",
    "paired_bootstrap",
    "parse_tasks",
    "score_choices",
    "select_items",
    "stack_continuations",
    "stack_prompt",
]
