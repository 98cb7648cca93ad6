"""Two lanes, one stack's run: while one process evaluates a stack from its first item on, the other generates the
same stack's stage texts from the last item backwards into the shared stage cache (fslm's StackSystem.warm). The
evaluating process reads them when it gets there, so the run ends about twice as soon.

Used by `eval_step.run_jobs` when a process has no run to take and would otherwise sit idle: waiting for the trained
stack's run (the ablations reuse its stage outputs), or for the last runs the other process holds. The run's own rows, scores and cost columns stay its own: a cached stage output carries the tokens
and seconds measured when it was generated (fslm.stack_cache), and run.json counts the reused share. The warming
stops at the first batch the evaluating process has already reached, so at most one batch is generated twice.
"""

from __future__ import annotations

import gc

from recipe import Recipe

from fslm.evaluate import parse_tasks, select_items
from fslm.evaluate.store import folder_busy, read_rows


def warmable(job) -> bool:
    """A stack run (it has stages to generate) that another process is writing and has not finished."""
    from eval_step import run_complete

    stack = job.spec.model is None and not job.spec.base
    return stack and folder_busy(job.folder) and not run_complete(job.folder, job.expected)


def warm_from_the_end(recipe: Recipe, job, log=print) -> int:
    """Generate `job`'s stage texts from its last item backwards while its evaluator is still short of them; returns
    the number of items warmed. Stops when the evaluator reaches the next batch, finishes, or stops."""
    from eval_step import run_complete, with_stage_cache

    plan = [(task, item) for task in parse_tasks(recipe.tasks) for item in select_items(task, job.limit, job.split)]
    done = read_rows(job.folder)
    todo = [(task, item) for task, item in plan if item.id not in done]
    if not todo:
        return 0
    log(
        f"  {job.spec.name}: another process is evaluating it; generating its stage texts from the last of its "
        f"{len(todo)} remaining items backwards into the shared stage cache"
    )
    system = with_stage_cache(recipe, job.spec).load()
    warmed = 0
    try:
        while todo:
            task = todo[-1][0]
            size = (
                recipe.eval_batch if todo[-1][1].choices else max(1, min(recipe.eval_batch, 16))
            )  # as fslm.evaluate batches
            batch = [item for t, item in todo[-size:] if t == task]
            if run_complete(job.folder, job.expected) or not folder_busy(job.folder):
                break  # finished, or its process stopped: the job queue takes over (and reads what is warmed)
            if any(item.id in read_rows(job.folder) for item in batch):
                break  # the evaluator has reached this batch
            system.warm(batch)
            del todo[-len(batch) :]
            warmed += len(batch)
    finally:
        del system
        gc.collect()
    log(f"  {job.spec.name}: {warmed} items' stage texts generated ahead of its evaluator")
    return warmed


__all__ = ["warm_from_the_end", "warmable"]
