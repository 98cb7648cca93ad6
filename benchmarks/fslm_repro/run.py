"""Issue 5 in one command: teachers -> distill -> finetune -> choice -> neutral -> retrieval -> scorer -> baselines -> select
-> eval -> timing -> report -> ship, every step resumable.

    python benchmarks/fslm_repro/run.py [--scale full|pilot|smoke] [--only STEP,...] [--out DIR] [--lanes 2]

Rerunning continues where it stopped: a step whose outputs exist is skipped, and the library calls underneath
(fslm.distill, fslm.finetune, fslm.evaluate) resume within a step. Big intermediate files (distilled data,
checkpoints) go to --work (default $FSLM_CACHE_DIR/fslm_repro/<scale>); results, the trained stack (fp16 adapters
<= 10 MB) and RESULTS.md go to --out. Python twin: `run_recipe(Recipe.for_scale(...))`. See docs/fslm_repro.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import baselines_step  # noqa: E402
import choice_step  # noqa: E402
import eval_step  # noqa: E402
import neutral_step  # noqa: E402
import pipeline  # noqa: E402
import report  # noqa: E402
import retrieval_step  # noqa: E402
import scorer_step  # noqa: E402
import select_step  # noqa: E402
import ship_step  # noqa: E402
import teachers_step  # noqa: E402
import timing_step  # noqa: E402
import typer  # noqa: E402
from lanes import LANE_HELPS, LANE_NEEDS, LANE_STEPS, Lane, lane_threads, threads_env  # noqa: E402
from recipe import STEPS, Recipe, StepLog  # noqa: E402

# step -> (is it done (from its outputs), run it)
STEP_FUNCS: dict[str, tuple[Callable[[Recipe], bool], Callable]] = {
    "teachers": (teachers_step.done, teachers_step.run),
    "distill": (pipeline.distill_done, pipeline.run_distill),
    "finetune": (pipeline.finetune_done, pipeline.run_finetune),
    "choice": (choice_step.done, choice_step.run),
    "neutral": (neutral_step.done, neutral_step.run),
    "retrieval": (retrieval_step.done, retrieval_step.run),
    "scorer": (scorer_step.done, scorer_step.run),
    "baselines": (baselines_step.done, baselines_step.run),
    "select": (select_step.done, select_step.run),
    "eval": (eval_step.eval_done, eval_step.run_eval),
    "timing": (timing_step.done, timing_step.run),
    "report": (report.done, report.run),
    "ship": (ship_step.done, ship_step.run),
}


def parse_steps(only: str | None) -> list[str]:
    from fslm.errors import ConfigError

    if not only:
        return list(STEPS)
    chosen = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise ConfigError(f"--only: unknown step(s) {unknown}; steps: {','.join(STEPS)}")
    return [s for s in STEPS if s in chosen]


def run_recipe(
    recipe: Recipe, steps: list[str] | None = None, log: Callable[[str], None] = print, lanes: int = 1
) -> dict:
    """Run the chosen steps in order (all by default); returns steps.json's content. lanes=2: a second process runs
    the `baselines` step beside the others and then helps with `eval`; each process gets half the threads (lanes.py)."""
    recipe.out.mkdir(parents=True, exist_ok=True)
    recipe.work.mkdir(parents=True, exist_ok=True)
    book = StepLog(recipe)
    _sigterm_raises()
    chosen = steps or list(STEPS)
    if recipe.teacher is None and "teachers" not in chosen and not (recipe.out / "teachers.json").is_file():
        log("note: no teachers.json yet and no --teacher; the distill step will ask for one")
    lane_steps = (
        [s for s in LANE_STEPS + LANE_HELPS if s in chosen and not STEP_FUNCS[s][0](recipe)] if lanes > 1 else []
    )
    if not lane_steps:
        _run_steps(recipe, book, chosen, log)
        return book.data
    threads = lane_threads(lanes)
    with threads_env(threads):
        _run_steps(recipe, book, [s for s in LANE_NEEDS if s in chosen], log)
        log(f"[lanes] {','.join(lane_steps)} in a second process; {threads} thread(s) per process")
        lane = Lane(recipe, lane_steps, threads)
        try:
            _run_steps(recipe, book, [s for s in chosen if s not in LANE_NEEDS + LANE_STEPS], log)
            lane.wait()
        except BaseException:
            lane.stop()
            raise
    return book.reload()


def _run_steps(recipe: Recipe, book: StepLog, steps: list[str], log: Callable[[str], None]) -> None:
    for name in steps:
        is_done, run = STEP_FUNCS[name]
        session = book.start(name)
        if is_done(recipe):
            log(f"[{name}] already done (outputs found); skipped")
            book.finish(name, session, "skipped")
            continue
        log(f"[{name}] running")
        try:
            run(recipe, log=log)
        except BaseException as err:  # KeyboardInterrupt included: the session's time is still recorded
            book.finish(name, session, "failed", f"{type(err).__name__}: {str(err)[:300]}")
            raise
        book.finish(name, session, "done")
        log(f"[{name}] done in {session['wall_seconds']} s")


def _sigterm_raises() -> None:
    """SIGTERM (kill, a CI timeout) ends the recipe like Ctrl-C does: the running step's time is recorded as
    failed in steps.json and its eval worker is stopped."""
    import signal
    import threading

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main(
    scale: str = typer.Option(
        "full",
        "--scale",
        help="full (issue 5's sizes) | pilot (256 records, 40 items per task: one session) | smoke (a handful of items, same code path).",
    ),
    only: str | None = typer.Option(
        None, "--only", help=f"Comma-separated steps to run ({','.join(STEPS)}); default: all."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Results folder (default benchmarks/results/fslm_repro; smoke: runs/fslm_repro_smoke)."
    ),
    work: Path | None = typer.Option(
        None, "--work", help="Intermediate files (default $FSLM_CACHE_DIR/fslm_repro/<scale>)."
    ),
    teacher: str | None = typer.Option(None, "--teacher", help="Use this teacher instead of the rule's choice."),
    candidates: str | None = typer.Option(None, "--candidates", help="Comma-separated teacher candidates to measure."),
    teacher_dtype: str | None = typer.Option(
        None, "--teacher-dtype", help="float32 | bfloat16 (default: bfloat16 on CPUs with native bf16, else float32)."
    ),
    budget_hours: float | None = typer.Option(
        None, "--budget-hours", help="Teachers projected slower than this are not chosen (default 8)."
    ),
    records: int | None = typer.Option(None, "--records", help="Records to distill (full: 2000)."),
    teacher_records: int | None = typer.Option(
        None, "--teacher-records", help="Records per teacher candidate (full: 20)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Eval items per task (full: 300)."),
    select_limit: int | None = typer.Option(
        None,
        "--select-limit",
        help="Held-out items per task that choose the attempt to ship (full: 50; 0: ship attempt 1).",
    ),
    timing_limit: int | None = typer.Option(
        None,
        "--timing-limit",
        help="Test items per task on which the timing step times every system together (full: 10).",
    ),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated eval tasks (default: all)."),
    big_models: str | None = typer.Option(None, "--big-models", help="Single larger models to evaluate alone."),
    data: str | None = typer.Option(
        None, "--data", help="Alpaca JSON/JSONL (default $FSLM_DATA_DIR/alpaca/random_9k.json)."
    ),
    stack: str | None = typer.Option(None, "--stack", help="Stack YAML to train (default: the packaged default)."),
    student: str | None = typer.Option(None, "--student", help="Base model of every stage (default: the stack's)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Fine-tuning epochs (default 1)."),
    choice_records: int | None = typer.Option(
        None, "--choice-records", help="Attempt 2's choice-style records (pilot: 240; full: 0 = attempt 2 off)."
    ),
    scorer_records: int | None = typer.Option(
        None,
        "--scorer-records",
        help="Attempt 5's raw-scored choice questions for the retrieval stack's answer adapter (full: 1000; 0: off).",
    ),
    passage_readers: int | None = typer.Option(
        None,
        "--passage-readers",
        help="How many of --big-models (in order) also read attempt 5's retrieved passages (full: 1; pilot: 0).",
    ),
    neutral: bool | None = typer.Option(
        None,
        "--neutral/--no-neutral",
        help="Attempt 3 (reasoning notes that pick no answer; default: on at pilot and smoke scale, off at full scale).",
    ),
    show_status: bool = typer.Option(
        False,
        "--status",
        help="Print where the run stands (steps, records, items per run, hours left at measured rates) and exit; safe beside a running recipe.",
    ),
    as_json: bool = typer.Option(False, "--json", help="With --status: print JSON."),
    lanes: int = typer.Option(
        1,
        "--lanes",
        min=1,
        max=2,
        help="2: a second process runs the baselines step beside the others, then helps with eval; each gets half of FSLM_THREADS (or of the cores).",
    ),
    warm_cache: bool = typer.Option(
        True,
        "--warm-cache/--no-warm-cache",
        help="With --lanes 2: a lane that would wait for a stack run the ablations reuse generates that run's stage texts from its last item backwards into the shared stage cache.",
    ),
) -> None:
    """Reproduce issue 5 end to end (resumable)."""
    from fslm.cli.common import guarded

    @guarded
    def go() -> None:
        recipe = Recipe.for_scale(
            scale,
            out,
            work,
            teacher=teacher,
            teacher_candidates=_split(candidates),
            teacher_dtype=teacher_dtype,
            budget_hours=budget_hours,
            distill_records=records,
            teacher_records=teacher_records,
            eval_limit=limit,
            select_limit=select_limit,
            timing_limit=timing_limit,
            tasks=_split(tasks),
            big_models=_split(big_models),
            data=data,
            stack=stack,
            student=student,
            epochs=epochs,
            choice_records=choice_records,
            neutral=neutral,
            scorer_records=scorer_records,
            warm_cache=warm_cache,
            passage_readers=passage_readers,
        )
        if show_status:
            import json

            import status

            where = status.status(recipe)
            print(json.dumps(where, indent=2) if as_json else status.render(where))
            return
        run_recipe(recipe, parse_steps(only), lanes=lanes)

    go()


if __name__ == "__main__":
    typer.run(main)
