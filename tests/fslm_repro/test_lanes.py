"""Two recipe processes (`--lanes 2`) never write one run folder together: a step waits for the folder another
process holds and takes it over if that process dies; the lane gets the same recipe and its share of the threads."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import replace

import pytest

from .conftest import needs_data


def hold(folder):
    """Take a run folder's lock the way another process's evaluation does (no run.json of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+b")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


@pytest.fixture()
def two_jobs(smoke_world, tmp_path):
    from eval_step import EvalJob, SystemSpec
    from recipe import Recipe

    recipe = Recipe.for_scale(
        "smoke", tmp_path / "out", tmp_path / "work", tasks=["arc_easy"], isolate_eval=False, poll_seconds=0.05
    )
    spec = SystemSpec("model-big", "big", "model", model=str(smoke_world["models"]["big"]))
    jobs = [EvalJob(replace(spec, name=name), tmp_path / "out" / "runs" / name, 1, 1) for name in ("held", "free")]
    return recipe, jobs


@needs_data
def test_a_job_another_process_holds_is_waited_for_and_taken_over_when_released(two_jobs):
    from eval_step import job_done, run_jobs

    recipe, (held, free) = two_jobs
    logs: list[str] = []
    holder = hold(held.folder)  # stands in for the other lane's worker
    runner = threading.Thread(target=run_jobs, args=(recipe, [held, free], logs.append))
    runner.start()
    try:
        for _ in range(600):  # the free job is done first, then the step waits on the held one
            if job_done(free) and any("waiting" in line for line in logs):
                break
            threading.Event().wait(0.1)
        assert job_done(free) and not job_done(held)
        assert f"  held: another process is evaluating it ({held.folder}); waiting" in logs
    finally:
        holder.close()  # the other process "dies": its lock goes with it
        runner.join(timeout=120)
    assert not runner.is_alive() and job_done(held)
    assert sum("waiting" in line for line in logs) == 1  # said once, not every poll


@needs_data
def test_an_isolated_worker_that_finds_its_folder_held_reports_busy(two_jobs):
    from eval_step import evaluate_system

    from fslm.evaluate.store import RunFolderBusy

    _, (held, _) = two_jobs
    with hold(held.folder):
        with pytest.raises(RunFolderBusy):
            evaluate_system(held.spec, ["arc_easy"], 1, held.folder, isolate=True)
    assert not (held.folder / "items.jsonl").exists()


def test_the_lane_gets_the_same_recipe(tmp_path):
    from lanes import recipe_from_json, recipe_to_json
    from recipe import Recipe

    recipe = Recipe.for_scale(
        "smoke",
        tmp_path / "out",
        tmp_path / "work",
        tasks=["arc_easy"],
        student="/models/x",
        ship_to=tmp_path / "stacks",
        poll_seconds=0.5,
    )
    assert recipe_from_json(recipe_to_json(recipe)) == recipe
    assert json.loads(recipe_to_json(recipe))["out"] == str(tmp_path / "out")


def test_each_lane_gets_its_share_of_the_threads_and_the_setting_is_restored(monkeypatch):
    from lanes import lane_threads, threads_env

    from fslm.settings import get_settings

    monkeypatch.setenv("FSLM_THREADS", "2")
    get_settings.cache_clear()
    try:
        assert lane_threads(2) == 1
        with threads_env(lane_threads(2)):
            assert os.environ["FSLM_THREADS"] == "1" and get_settings().threads == 1
        assert os.environ["FSLM_THREADS"] == "2" and get_settings().threads == 2
        monkeypatch.setenv("FSLM_THREADS", "1")
        get_settings.cache_clear()
        assert lane_threads(2) == 1  # never zero
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_a_step_s_wall_time_counts_overlapping_sessions_once():
    from recipe import busy_seconds

    sessions = [
        {"started": "2026-01-01T10:00:00+00:00", "wall_seconds": 600, "status": "done"},
        {"started": "2026-01-01T10:05:00+00:00", "wall_seconds": 600, "status": "done"},  # the other lane, overlapping
        {"started": "2026-01-01T12:00:00+00:00", "wall_seconds": 60, "status": "failed"},  # a later, resumed session
        {"started": "2026-01-01T13:00:00+00:00", "wall_seconds": 5, "status": "skipped"},
    ]
    assert busy_seconds(sessions) == 900 + 60


def test_two_processes_logging_one_step_keep_both_sessions(tmp_path):
    from recipe import Recipe, StepLog

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work")
    mine, other = StepLog(recipe), StepLog(recipe)  # both read steps.json before either wrote
    a, b = mine.start("eval"), other.start("eval")
    other.finish("eval", b, "done")
    mine.finish("eval", a, "done")
    entry = json.loads((recipe.out / "steps.json").read_text())["steps"]["eval"]
    assert [s["id"] for s in entry["sessions"]] == [a["id"], b["id"]] and entry["status"] == "done"  # in start order


def test_stacks_that_reuse_the_trained_stack_s_outputs_run_after_it(tmp_path):
    from eval_step import eval_jobs
    from recipe import Recipe

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work", tasks=["arc_easy"])
    after = {j.spec.name: [f.name for f in j.after] for j in eval_jobs(recipe)}
    for name in ("stack-notes-raw", "stack-no-intent", "stack-no-facts", "stack-no-reasoning", "stack-2stage"):
        assert after[name] == ["stack-trained"]
    for name in (
        "stack-trained",
        "base",
        "stack-promptonly",
        "stack-answer-only",
        "base-stackformat",
        "stack-retrieval",
        "stack-scorer",
    ):
        assert after[name] == []


def test_eval_measures_the_score_only_attempt_first_and_leaves_the_baselines_step_s_systems_last(tmp_path):
    from eval_step import eval_jobs, systems
    from recipe import Recipe

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work", tasks=["arc_easy"])
    order = [j.spec.name for j in eval_jobs(recipe)]
    trained = [s.name for s in systems(recipe) if s.needs_training and s.name != "stack-scorer"]
    untrained = [s.name for s in systems(recipe) if not s.needs_training]
    assert "base" in untrained and "stack-no-intent" in trained  # both groups are there to order
    assert order == ["stack-scorer"] + trained + untrained  # each group in report order


@needs_data
def test_a_job_waits_for_the_run_whose_stage_outputs_it_reuses(two_jobs):
    from eval_step import job_done, run_jobs

    recipe, (first, second) = two_jobs
    second = replace(second, after=(first.folder,))
    logs: list[str] = []
    holder = hold(first.folder)  # another process is running the job `second` reuses
    runner = threading.Thread(target=run_jobs, args=(recipe, [first, second], logs.append))
    runner.start()
    try:
        for _ in range(100):
            if len(logs) >= 2:
                break
            threading.Event().wait(0.05)
        assert not job_done(second)  # not started beside it
        assert "  free: it reuses the stage outputs of held; waiting" in logs
    finally:
        holder.close()
        runner.join(timeout=120)
    assert job_done(first) and job_done(second)


def test_a_running_step_is_logged_at_start_and_on_every_heartbeat(tmp_path):
    """A session killed without warning (SIGKILL, the machine going away) keeps its time up to the last beat."""
    import time

    from recipe import Recipe, StepLog

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work", heartbeat_seconds=0.05)
    book = StepLog(recipe)
    session = book.start("distill")
    entry = json.loads((recipe.out / "steps.json").read_text())["steps"]["distill"]
    assert (
        entry["status"] == "running"
        and entry["sessions"][0]["id"] == session["id"]
        and "t0" not in entry["sessions"][0]
    )
    time.sleep(0.4)
    entry = json.loads((recipe.out / "steps.json").read_text())["steps"]["distill"]
    assert entry["status"] == "running" and 0.1 < entry["sessions"][0]["wall_seconds"] == entry["wall_seconds"] < 5
    assert entry["sessions"][0]["last_seen"]
    book.finish("distill", session, "done")
    entry = json.loads((recipe.out / "steps.json").read_text())["steps"]["distill"]
    assert [s["status"] for s in entry["sessions"]] == ["done"] and "last_seen" not in entry["sessions"][0]
    assert entry["status"] == "done" and entry["wall_seconds"] >= 0.4


def test_a_session_that_stopped_beating_is_marked_interrupted_and_keeps_its_time(tmp_path):
    from recipe import Recipe, StepLog

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work", heartbeat_seconds=60)
    recipe.out.mkdir(parents=True)
    dead = {
        "id": "deadbeef0000",
        "pid": 1,
        "started": "2026-01-01T10:00:00+00:00",
        "last_seen": "2026-01-01T10:30:00+00:00",
        "status": "running",
        "wall_seconds": 1800.0,
    }
    (recipe.out / "steps.json").write_text(
        json.dumps(
            {
                "identity": recipe.identity(),
                "steps": {"distill": {"status": "running", "wall_seconds": 1800.0, "sessions": [dead]}},
            }
        )
    )
    book = StepLog(recipe)
    mine = book.start("finetune")  # any write looks at every step's sessions
    steps = json.loads((recipe.out / "steps.json").read_text())["steps"]
    assert steps["distill"]["sessions"][0]["status"] == "interrupted" and steps["distill"]["status"] == "interrupted"
    assert steps["distill"]["wall_seconds"] == 1800.0  # the time up to its last beat still counts
    assert steps["finetune"]["sessions"][0]["status"] == "running"  # its own session is fresh, never interrupted
    book.finish("finetune", mine, "failed", "KeyboardInterrupt")


def test_step_status_follows_the_last_session_that_worked():
    from recipe import step_status

    assert step_status([]) == "pending"
    assert step_status([{"status": "failed"}, {"status": "done"}, {"status": "skipped"}]) == "done"
    assert step_status([{"status": "done"}, {"status": "running"}]) == "running"
    assert step_status([{"status": "done"}, {"status": "failed"}]) == "failed"  # e.g. a report redone after new results
    assert step_status([{"status": "skipped"}]) == "done"
    assert step_status([{"status": "interrupted"}]) == "interrupted"


@pytest.fixture()
def stack_jobs(smoke_world, tmp_path):
    """A 4-stage stack's run that another process holds, and an ablation-like job that reuses its stage outputs."""
    from eval_step import EvalJob, SystemSpec
    from recipe import Recipe

    recipe = Recipe.for_scale(
        "smoke",
        tmp_path / "out",
        tmp_path / "work",
        tasks=["arc_easy", "gsm8k"],
        isolate_eval=False,
        poll_seconds=0.05,
        eval_batch=1,
    )
    spec = SystemSpec("trained", "trained", "trained", stack=smoke_world["stack"])
    held = EvalJob(spec, recipe.out / "runs" / "trained", 2, 4)
    after = EvalJob(replace(spec, name="ablation"), recipe.out / "runs" / "ablation", 2, 4, after=(held.folder,))
    return recipe, held, after


@needs_data
def test_a_lane_with_nothing_to_take_generates_the_held_stack_run_s_stage_texts_from_the_end(stack_jobs):
    from eval_step import job_done, run_jobs

    recipe, held, after = stack_jobs
    logs: list[str] = []
    holder = hold(held.folder)  # the other lane's worker, which has not written a row yet
    runner = threading.Thread(target=run_jobs, args=(recipe, [held, after], logs.append))
    runner.start()
    try:
        for _ in range(1200):
            if any("generated ahead" in line for line in logs):
                break
            threading.Event().wait(0.1)
        assert "  trained: 4 items' stage texts generated ahead of its evaluator" in logs
        assert not job_done(held) and not job_done(after)  # warming writes no row of the run
    finally:
        holder.close()  # the other worker stops: this process takes the run over and reads every stage text
        runner.join(timeout=300)
    assert not runner.is_alive() and job_done(held) and job_done(after)
    cache = json.loads((held.folder / "run.json").read_text())["sessions"][0]["stage_cache"]
    assert cache["misses"] == 0 and cache["hits"] == 2 * 3 + 2 * 4  # 3 early stages per choice item, 4 per gsm8k item


@needs_data
def test_warming_stops_where_the_evaluator_has_caught_up(stack_jobs, monkeypatch):
    """The evaluator writes rows from the first item on while the warming works back from the last: they meet in the
    middle, and the warming never generates an item the evaluator has done."""
    import warm_cache

    from fslm.evaluate import StackSystem
    from fslm.evaluate.store import read_rows

    recipe, held, after = stack_jobs
    order = [
        json.dumps({"id": i, "task": t})
        for t, i in [(t, it.id) for t in ("arc_easy", "gsm8k") for it in warm_cache.select_items(t, 2)]
    ]
    real, warmed_ids = StackSystem.warm, []

    def warm_then_the_evaluator_writes_a_row(self, items):
        real(self, items)
        warmed_ids.extend(it.id for it in items)
        done = len(read_rows(held.folder))
        with open(held.folder / "items.jsonl", "a") as fh:
            fh.write(order[done] + "\n")

    monkeypatch.setattr(StackSystem, "warm", warm_then_the_evaluator_writes_a_row)
    with hold(held.folder):
        assert warm_cache.warmable(held) and not warm_cache.warmable(replace(held, spec=replace(held.spec, base=True)))
        assert warm_cache.warm_from_the_end(recipe, held, log=lambda _: None) == 2
    ids = [json.loads(line)["id"] for line in order]
    assert warmed_ids == ids[:1:-1] and set(read_rows(held.folder)) == set(ids[:2])  # last two warmed, first two done


def test_ablations_that_only_score_run_before_those_that_generate_texts_of_their_own(tmp_path):
    from eval_step import ablations, eval_jobs, systems, texts_to_generate
    from recipe import Recipe

    from fslm.evaluate.store import write_atomic

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work", tasks=["arc_easy"])
    trained = recipe.trained_dir / "stack.yaml"
    trained.parent.mkdir(parents=True)
    write_atomic(trained, recipe.stack_config().to_yaml())
    specs = {s.name: s for s in ablations(recipe, write=True)}
    # facts sees only the prompt, so its texts are the trained stack's; reasoning sees intent and facts
    new = {name: texts_to_generate(s.stack, trained) for name, s in specs.items()}
    assert new == {
        "stack-answer-only": 0,
        "stack-no-intent": 1,
        "stack-no-facts": 1,
        "stack-no-reasoning": 0,
        "stack-2stage": 0,
    }
    assert texts_to_generate(trained, trained) == 0
    order = [j.spec.name for j in eval_jobs(recipe)]
    trained_group = [s.name for s in systems(recipe) if s.needs_training]
    assert order.index("stack-2stage") < order.index("stack-no-intent") < order.index("stack-no-facts")
    assert order.index("stack-no-reasoning") < order.index("stack-no-intent")
    assert order.index("stack-trained") < order.index("stack-no-reasoning") and set(order[: len(trained_group)]) == set(
        trained_group
    )
