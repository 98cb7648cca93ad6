"""The whole path on the real embedded model: distill Alpaca records with SmolLM2 as teacher, fine-tune the stages of
the default stack's free-form branch, run the trained stack on both branches. (The 200-record run is benchmarks/bench_train.py e2e.)"""

from __future__ import annotations

import time

import pytest

from fslm.errors import ModelNotFoundError


@pytest.mark.slow
def test_distill_finetune_run_on_the_default_stack(tmp_path):
    from fslm.distill import DistillOptions, default_data_path, distill
    from fslm.engine import load_engine
    from fslm.finetune import TrainOptions, finetune
    from fslm.stack import Stack
    from fslm.teachers import LocalTeacher

    try:
        engine = load_engine("smollm2-135m")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    if not default_data_path().is_file():
        pytest.skip(f"no Alpaca data at {default_data_path()}")
    t0 = time.perf_counter()
    report = distill(None, None, tmp_path / "d.jsonl", teacher=LocalTeacher(engine), options=DistillOptions(limit=16))
    assert report.written == 16 and report.kept >= 2, report
    trained = finetune(
        None, tmp_path / "d.jsonl", tmp_path / "out", TrainOptions(max_length=384, save_every=2), engine=engine
    )
    assert set(trained.stages) == {"facts", "reasoning", "answer"}  # the free-form branch; `pick` keeps its adapter
    assert all(s["steps"] >= 1 and s["final_loss"] > 0 for s in trained.stages.values())
    result = Stack.load(tmp_path / "out" / "stack.yaml", engine=engine).run("Name three primary colors.")
    assert [r.adapter for r in result.trace] == [None, "facts", "reasoning", "answer"]  # pick: skipped, no options
    scored = Stack.load(tmp_path / "out" / "stack.yaml", engine=engine).run("Pick one.\nA. red\nB. blue")
    assert scored.answer_stage == "pick" and scored.trace[0].adapter == "pick"
    assert result.answer.strip()
    assert time.perf_counter() - t0 < 900
