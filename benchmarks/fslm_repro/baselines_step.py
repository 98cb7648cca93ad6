"""Step `baselines`: every system that needs no fine-tuning, on the test items and (select's context) the held-out items.

The base model, the same stack without adapters, the larger single models, the base model in the answer stage's
format and the retrieval systems read nothing the distill and finetune steps make. As their own step they can run
before those steps, or beside them in a second process (`run.py --lanes 2`): on a 2-core CPU, two one-thread
processes get more done than one two-thread process (docs/evaluate.md). The `select` and `eval` steps find these
runs done, or wait for the lane that is writing them (eval_step.run_jobs), and never evaluate a system twice.
"""

from __future__ import annotations

import retrieval_step
import select_step
from eval_step import EvalJob, expected_items, job_done, run_jobs, systems, write_prompt_stacks
from recipe import Recipe

from fslm.errors import ConfigError

# Cheap systems first (a lane that stops early leaves the most comparisons), the 3-stage generating one last.
ORDER = ("base", "format", "retrieval", "retrieval-chat", "model", "model-retrieval", "promptonly")


def jobs(recipe: Recipe) -> list[EvalJob]:
    """Held-out runs first (the `select` step needs them and they are small), then the test runs."""
    specs = sorted((s for s in systems(recipe) if not s.needs_training), key=lambda s: ORDER.index(s.kind))
    expected = expected_items(recipe)
    heldout = (
        select_step.jobs(recipe, [s for s in specs if s.name in select_step.CONTEXT]) if recipe.select_limit else []
    )
    return heldout + [EvalJob(s, recipe.runs_dir / s.name, recipe.eval_limit, expected) for s in specs]


def done(recipe: Recipe) -> bool:
    return all(job_done(j) for j in jobs(recipe))


def run(recipe: Recipe, log=print) -> dict:
    if recipe.retrieval and not retrieval_step.done(recipe):
        raise ConfigError("the retrieval systems need the 'retrieval' step's index: run it first (it takes seconds)")
    write_prompt_stacks(recipe)
    todo = jobs(recipe)
    run_jobs(recipe, todo, log)
    return {"runs": [str(j.folder.relative_to(recipe.out)) for j in todo]}
