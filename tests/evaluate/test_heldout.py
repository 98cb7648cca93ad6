"""`--split heldout`: items that no evaluation at --limit <= EVAL_RESERVE reads."""

from __future__ import annotations

import pytest

from fslm.errors import InputError
from fslm.evaluate import evaluate, select_items
from fslm.tasks import list_tasks, load_task
from fslm.tasks.splits import EVAL_RESERVE, HELDOUT, heldout_items, heldout_source

from .conftest import needs_data


@needs_data
@pytest.mark.parametrize("task", [t for t in list_tasks()])
def test_heldout_items_never_meet_the_items_an_evaluation_reads(task):
    pool = select_items(task, None, HELDOUT)
    reserved = select_items(task, EVAL_RESERVE)
    assert len(pool) >= 40
    assert not {it.id for it in pool} & {it.id for it in reserved}
    norm = lambda t: " ".join(t.split()).casefold()  # noqa: E731
    assert not {norm(it.question) for it in pool} & {norm(it.question) for it in reserved}


@needs_data
def test_dev_splits_are_preferred_and_read_from_their_end():
    assert heldout_source("arc_challenge") == ("validation", 0)
    assert heldout_source("openbookqa") == ("validation", 0)
    assert heldout_source("gsm8k") == ("train", 0)
    assert heldout_source("boolq") == ("validation", EVAL_RESERVE)
    dev = load_task("arc_challenge", split="validation")
    assert select_items("arc_challenge", 3, HELDOUT) == dev[::-1][:3]
    # the recipe's `choice` step trains on the head of ARC-Challenge validation / MMLU dev: a small pool misses it
    head = {it.id for it in load_task("mmlu", split="dev", limit=80)}
    assert not head & {it.id for it in select_items("mmlu", 20, HELDOUT)}
    assert len({it.meta["subject"] for it in select_items("mmlu", 20, HELDOUT)}) == 20


def test_a_task_whose_only_split_is_reserved_has_no_heldout_items(tiny_data):
    with pytest.raises(InputError, match=r"arc_easy: its only split 'test' has 3 items, all reserved"):
        heldout_items("arc_easy")


@needs_data
def test_heldout_runs_are_zero_shot_and_recorded_as_such(model_system, tmp_path):
    with pytest.raises(InputError, match="evaluate it zero-shot"):
        evaluate(model_system, ["arc_challenge"], 2, num_fewshot=1, split=HELDOUT)
    summary = evaluate(model_system, ["arc_challenge"], 2, split=HELDOUT, out_dir=tmp_path / "run")
    assert summary.data["split"] == HELDOUT
    assert [r["id"] for r in summary.rows] == [it.id for it in select_items("arc_challenge", 2, HELDOUT)]


@needs_data
@pytest.mark.parametrize("task", ["arc_easy", "boolq", "hellaswag", "piqa", "truthfulqa_mc2", "winogrande"])
def test_single_split_tasks_take_few_shot_examples_between_the_reserve_and_the_heldout_pool(task):
    from fslm.tasks.splits import FEWSHOT_TAIL, tail_fewshot_pool

    order = select_items(task, None)
    pool = tail_fewshot_pool(task)
    assert heldout_source(task)[1] == EVAL_RESERVE  # the task has no train/dev split
    assert {it.id for it in pool} <= {it.id for it in order[EVAL_RESERVE : EVAL_RESERVE + FEWSHOT_TAIL]}
    assert len(pool) >= FEWSHOT_TAIL - 10  # only copies of reserved questions are dropped
    heldout = select_items(task, None, HELDOUT)
    ids = {it.id for it in pool}
    assert not ids & {it.id for it in order[:EVAL_RESERVE]} and not ids & {it.id for it in heldout}
    # the held-out items runs already used (up to 100 from the end) are the same as before the pool existed
    assert [it.id for it in heldout[:100]] == [it.id for it in order[::-1][:100]]


@needs_data
def test_few_shot_on_a_single_split_task_reads_the_pool_and_refuses_to_evaluate_it(model_system):
    import random

    from fslm.evaluate.run import FEWSHOT_SEED
    from fslm.tasks.base import build_context
    from fslm.tasks.splits import tail_fewshot_pool

    summary = evaluate(model_system, ["boolq"], 1, num_fewshot=2)
    shots = random.Random(FEWSHOT_SEED).sample(tail_fewshot_pool("boolq"), 2)  # lm-eval's default sampler
    assert summary.data["num_fewshot"] == 2 and summary.data["n_items"] == 1
    assert summary.rows[0]["prompt"] == build_context(select_items("boolq", 1)[0], shots)
    with pytest.raises(
        InputError, match=r"boolq: its few-shot examples are its items 300\.\.400 .* use --limit 300 or less"
    ):
        evaluate(model_system, ["boolq"], 301, num_fewshot=2)
