"""`run.py --lanes 2`: the `baselines` step in a second process beside the main chain of steps, which then helps
with the `eval` step.

Distillation, fine-tuning and the trained systems form one chain; the baselines need none of it. Once they are done
and the stack is trained, the lane runs the eval step too: both processes take the systems the other does not hold
(eval_step.run_jobs), and stacks that reuse the trained stack's stage outputs wait for its run. On this 2-core CPU
a process with two torch threads loses much of the second core to thread barriers (docs/evaluate.md: 738 s with two
threads alone vs 1,102 s with one thread beside another job, i.e. two one-thread lanes do ~1.3x the work), so each
lane gets FSLM_THREADS = threads // lanes. The lane is a child process in its own session: stopping the recipe stops
it. Both processes log to steps.json under a lock; the `select` and `eval` steps wait for the systems the lane is
writing instead of evaluating them twice (eval_step.run_jobs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

from recipe import Recipe

from fslm.errors import ConfigError
from fslm.settings import get_settings

LANE_STEPS = ("baselines",)  # what the second lane runs instead of the main one
LANE_HELPS = ("eval",)  # what it then runs beside the main one (each takes the systems the other does not hold)
LANE_NEEDS = ("retrieval",)  # steps the lane reads (seconds): run first, before the lane starts
PATH_FIELDS = ("out", "work", "ship_to")


def recipe_to_json(recipe: Recipe) -> str:
    return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(recipe).items()})


def recipe_from_json(text: str) -> Recipe:
    data = json.loads(text)
    known = {f.name for f in fields(Recipe)}
    return Recipe(**{k: (Path(v) if k in PATH_FIELDS and v is not None else v) for k, v in data.items() if k in known})


def lane_threads(lanes: int) -> int:
    total = get_settings().threads or os.cpu_count() or 1
    return max(1, total // lanes)


@contextmanager
def threads_env(threads: int) -> Iterator[None]:
    """FSLM_THREADS for this process (and its eval workers) while the lanes run; restored after."""
    before = os.environ.get("FSLM_THREADS")
    os.environ["FSLM_THREADS"] = str(threads)
    get_settings.cache_clear()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FSLM_THREADS", None)
        else:
            os.environ["FSLM_THREADS"] = before
        get_settings.cache_clear()


class Lane:
    """A child process running some steps of the same recipe."""

    def __init__(self, recipe: Recipe, steps: list[str], threads: int):
        self.steps = steps
        env = {**os.environ, "FSLM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), recipe_to_json(recipe), json.dumps(steps)],
            env=env,
            start_new_session=True,
        )

    def wait(self) -> None:
        code = self.proc.wait()
        if code != 0:
            raise ConfigError(
                f"the lane running {','.join(self.steps)} failed (exit code {code}; its error is printed above "
                "with a '[lane]' prefix); rerun to resume"
            )

    def stop(self) -> None:
        from eval_step import _stop_group

        _stop_group(self.proc)


def wait_for_training(recipe: Recipe, log) -> bool:
    """Block until the main lane has trained the stack and the scorer (the eval step runs both); False if that lane is gone."""
    import time

    import scorer_step
    from pipeline import finetune_done

    parent = os.getppid()
    said = False
    while not (finetune_done(recipe) and scorer_step.done(recipe)):  # the eval step runs the stacks both make
        if os.getppid() != parent or parent == 1:
            return False
        if not said:
            log("waiting for the main lane's finetune and scorer steps before helping with the eval step")
            said = True
        time.sleep(recipe.poll_seconds)
    return True


def run_lane(recipe: Recipe, steps: list[str], log) -> None:
    from run import run_recipe

    for step in steps:
        if step in LANE_HELPS and not wait_for_training(recipe, log):
            log("the main lane is gone; stopping")
            return
        run_recipe(recipe, [step], log=log)


if __name__ == "__main__":
    from fslm.errors import FslmError

    try:
        run_lane(
            recipe_from_json(sys.argv[1]), json.loads(sys.argv[2]), log=lambda msg: print(f"[lane] {msg}", flush=True)
        )
    except FslmError as err:
        print(f"[lane] error: {err}", file=sys.stderr)
        sys.exit(2)
