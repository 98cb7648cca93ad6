"""End-to-end runs on a tiny model: outputs, resumability, stacks, limits and row format."""

from __future__ import annotations

import json

import pytest

from fslm.config import parse_stack_config
from fslm.errors import DataError, InputError
from fslm.evaluate import StackSystem, compare, evaluate, select_items
from fslm.stack import Stack
from fslm.tasks import load_task

from .conftest import needs_data

ROW_KEYS = {
    "id",
    "task",
    "prompt",
    "stages",
    "choice_scores",
    "prediction",
    "gold",
    "correct",
    "acc",
    "acc_norm",
    "tokens_in",
    "tokens_out",
    "seconds",
}


def test_run_writes_four_outputs_with_the_documented_schema(model_system, tiny_data, tmp_path):
    out = tmp_path / "run"
    summary = evaluate(model_system, ["arc_easy", "gsm8k"], limit=None, out_dir=out, gen_max_tokens=8)
    for name in ("items.jsonl", "summary.json", "table.md", "chart.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "summary.json").read_text())
    assert data["system"] == "model:tiny" and set(data["tasks"]) == {"arc_easy", "gsm8k"}
    arc = data["tasks"]["arc_easy"]
    assert arc["n"] == 3 and 0.0 <= arc["acc"] <= 1.0 and arc["acc_norm"] is not None
    assert arc["ci95"][0] <= arc["acc"] <= arc["ci95"][1]
    assert data["tasks"]["gsm8k"]["acc_norm"] is None and data["tasks"]["gsm8k"]["metric"] == "exact_match"
    assert data["macro_acc"] == pytest.approx((arc["acc"] + data["tasks"]["gsm8k"]["acc"]) / 2, abs=1e-4)
    assert data["params_touched"] == model_system.engine.params
    assert {"generated_tokens_per_item", "seconds_per_item", "peak_rss_mb", "wall_seconds"} <= set(data["cost"])
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| arc_easy |" in (out / "table.md").read_text()
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(ROW_KEYS <= set(r) for r in rows)
    gen = [r for r in rows if r["task"] == "gsm8k"]
    assert all(r["choice_scores"] is None and isinstance(r["generation"], str) and r["tokens_out"] >= 1 for r in gen)
    assert summary.tasks == data["tasks"]


def test_choice_scores_are_the_engines_raw_logprobs(model_system, tiny_data):
    summary = evaluate(model_system, ["arc_easy"])
    items = load_task("arc_easy")
    for item, row in zip(items, summary.rows, strict=True):
        direct = model_system.engine.score([item.context] * len(item.choices), list(item.continuations))
        assert row["choice_scores"] == pytest.approx([s.logprob for s in direct], abs=1e-4)
        assert row["prediction"] == max(range(len(direct)), key=lambda i: direct[i].logprob)
        assert row["correct"] == (row["prediction"] == item.gold) and row["acc"] == float(row["correct"])


def test_rerun_skips_done_items_and_resumes_after_a_torn_write(model_system, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = evaluate(model_system, ["arc_easy"], out_dir=out)
    items_path = out / "items.jsonl"
    lines = items_path.read_text().splitlines(keepends=True)
    # simulate a kill: the last row half-written, the one before it complete
    items_path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    calls = []
    original = model_system.answer_choices
    monkeypatch.setattr(
        model_system, "answer_choices", lambda items, shots: calls.append(len(items)) or original(items, shots)
    )
    second = evaluate(model_system, ["arc_easy"], out_dir=out)
    assert calls == [1]  # only the torn item was redone
    assert second.tasks["arc_easy"]["acc"] == first.tasks["arc_easy"]["acc"]
    assert len(items_path.read_text().splitlines()) == 3
    calls.clear()
    evaluate(model_system, ["arc_easy"], out_dir=out)
    assert calls == []  # everything done: nothing recomputed
    run = json.loads((out / "run.json").read_text())
    assert len(run["sessions"]) == 3


def test_a_run_folder_being_written_refuses_a_second_writer(model_system, tiny_data, tmp_path):
    from fslm.evaluate.store import RunStore

    out = tmp_path / "run"
    with RunStore(out, {"system": "someone-else"}):  # another evaluation holds the folder
        with pytest.raises(InputError, match="another evaluation is writing"):
            evaluate(model_system, ["arc_easy"], out_dir=out)
    assert not (out / "items.jsonl").exists()  # nothing was written beside the holder
    with RunStore(out, {"system": "someone-else"}):  # a refused open leaves no lock behind; the holder's is released
        pass


def test_folder_busy_tells_whether_another_writer_holds_the_folder(tmp_path):
    from fslm.evaluate.store import RunFolderBusy, RunStore, folder_busy

    out = tmp_path / "run"
    assert not folder_busy(out) and not out.exists()  # asking creates nothing
    with RunStore(out, {"system": "a"}):
        assert folder_busy(out)
        with pytest.raises(RunFolderBusy):
            RunStore(out, {"system": "a"})
    assert not folder_busy(out)
    assert issubclass(RunFolderBusy, InputError)  # the CLI's error path (exit 2, message) still applies


def test_resume_refuses_a_different_system_or_setting(model_system, tiny_data, tmp_path):
    out = tmp_path / "run"
    evaluate(model_system, ["arc_easy"], out_dir=out)
    model_system.name = "model:other"
    with pytest.raises(InputError, match="different run"):
        evaluate(model_system, ["arc_easy"], out_dir=out)


def test_malformed_row_in_the_middle_names_file_and_line(model_system, tiny_data, tmp_path):
    out = tmp_path / "run"
    evaluate(model_system, ["arc_easy"], out_dir=out)
    lines = (out / "items.jsonl").read_text().splitlines(keepends=True)
    (out / "items.jsonl").write_text(lines[0] + "{oops\n" + "".join(lines[1:]))
    with pytest.raises(DataError, match=r"items.jsonl:2"):
        evaluate(model_system, ["arc_easy"], out_dir=out)


def test_limit_larger_than_the_data_uses_all_and_says_so(model_system, tiny_data):
    summary = evaluate(model_system, ["arc_easy"], limit=50)
    assert summary.tasks["arc_easy"]["n"] == 3
    assert any("larger than the 3 items" in note for note in summary.notes)


def test_rows_outside_the_run_are_kept_and_reported(model_system, tiny_data, tmp_path):
    out = tmp_path / "run"
    evaluate(model_system, ["arc_easy"], limit=3, out_dir=out)
    summary = evaluate(model_system, ["arc_easy"], limit=2, out_dir=out)
    assert summary.data["n_items"] == 2 and len((out / "items.jsonl").read_text().splitlines()) == 3
    assert any(note.startswith("1 row(s) in") and "not among this run's items" in note for note in summary.notes)
    assert not evaluate(model_system, ["arc_easy"], limit=3, out_dir=out).notes


def test_bad_limit_and_fewshot_without_a_fewshot_split(model_system, tiny_data):
    with pytest.raises(InputError):
        evaluate(model_system, ["arc_easy"], limit=0)
    with pytest.raises(Exception, match="no train/dev split"):
        evaluate(model_system, ["arc_easy"], num_fewshot=2)


STACK = {
    "name": "tiny2",
    "base_model": "tiny",
    "stages": [
        {"name": "facts", "instruction": "List facts.", "sees": ["prompt"], "generation": {"max_new_tokens": 5}},
        {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"], "generation": {"max_new_tokens": 6}},
    ],
}


def test_stack_scores_choices_after_its_earlier_stages(tiny_engine, tiny_data, tmp_path):
    stack = Stack(parse_stack_config(STACK), tiny_engine)
    system = StackSystem(stack)
    summary = evaluate(system, ["arc_easy", "gsm8k"], out_dir=tmp_path / "s")
    arc = [r for r in summary.rows if r["task"] == "arc_easy"]
    for row, item in zip(arc, load_task("arc_easy"), strict=True):
        assert set(row["stages"]) == {"facts"} and row["prompt"].startswith(item.question)
        assert "A. " in row["prompt"] and row["tokens_out"] >= 0
        # the answer stage's input, rebuilt from the recorded trace, conditions every choice
        ctx = stack.stage_input(1, row["prompt"], row["stages"])
        direct = tiny_engine.score([ctx] * len(item.choices), [c.strip() for c in item.choices])
        assert row["choice_scores"] == pytest.approx([s.logprob for s in direct], abs=1e-4)
    gsm = [r for r in summary.rows if r["task"] == "gsm8k"]
    assert all(set(r["stages"]) == {"facts", "answer"} and r["generation"] == r["stages"]["answer"] for r in gsm)
    assert summary.data["kind"] == "stack" and summary.data["stages"] == ["facts", "answer"]
    with pytest.raises(InputError, match="zero-shot"):
        evaluate(system, ["arc_easy"], num_fewshot=1)


def test_raw_answer_format_is_the_model_alone_reading_the_earlier_texts(tiny_engine, tiny_data, tmp_path):
    """answer_format="raw": the base model scores lm-eval's raw context, as ModelSystem does, after the notes."""
    from fslm.evaluate import ModelSystem

    stack = Stack(parse_stack_config(STACK), tiny_engine)
    raw = evaluate(StackSystem(stack, answer_format="raw"), ["arc_easy", "gsm8k"], out_dir=tmp_path / "raw")
    plain = evaluate(StackSystem(stack), ["arc_easy", "gsm8k"])
    alone = evaluate(ModelSystem(tiny_engine, name="model:tiny"), ["arc_easy"])
    assert raw.system == f"stack:{STACK['name']}+raw-answer" and raw.data["answer_format"] == "raw"
    arc = [r for r in raw.rows if r["task"] == "arc_easy"]
    for row, same, base, item in zip(arc, plain.rows[: len(arc)], alone.rows, load_task("arc_easy"), strict=True):
        assert row["stages"] == same["stages"]  # the earlier stages are the stack's own
        notes = f"{stack.config.stages[0].display_label}: {row['stages']['facts'].strip()}\n\n"
        direct = tiny_engine.score([notes + item.context] * len(item.choices), list(item.continuations))
        assert row["choice_scores"] == pytest.approx([s.logprob for s in direct], abs=1e-4)
        assert row["choice_scores"] != pytest.approx(base["choice_scores"], abs=1e-4)  # the notes changed the scores
    gsm = [r for r in raw.rows if r["task"] == "gsm8k"]
    assert all(set(r["stages"]) == {"facts"} and r["generation"] is not None for r in gsm)
    with pytest.raises(InputError, match="answer format 'chat'"):
        StackSystem(stack, answer_format="chat")


@pytest.mark.parametrize("answer_format", ["stack", "raw"])
def test_warming_a_shared_stage_cache_leaves_an_evaluation_nothing_to_generate(
    tiny_engine, tiny_data, tmp_path, answer_format
):
    """warm() generates exactly the stage texts an evaluation asks for: a second process evaluating the same stack
    with the same cache file reads every one of them, and its rows are those of an uncached run."""
    from fslm.stack_cache import StageCache

    cfg = parse_stack_config(STACK)
    items = [it for task in ("arc_easy", "gsm8k") for it in select_items(task)]
    with StageCache(tmp_path / "stages.sqlite") as cache:
        StackSystem(Stack(cfg, tiny_engine, cache=cache), answer_format=answer_format).warm(items[::-1])
        assert cache.misses > 0 and cache.hits == 0
    with StageCache(tmp_path / "stages.sqlite") as cache:
        warmed = evaluate(
            StackSystem(Stack(cfg, tiny_engine, cache=cache), answer_format=answer_format), ["arc_easy", "gsm8k"]
        )
        assert cache.misses == 0 and cache.hits > 0
    fresh = evaluate(StackSystem(Stack(cfg, tiny_engine), answer_format=answer_format), ["arc_easy", "gsm8k"])
    drop = lambda row: {k: v for k, v in row.items() if k != "seconds"}  # noqa: E731 (scoring time differs)
    assert [drop(r) for r in warmed.rows] == [drop(r) for r in fresh.rows]


def test_stack_params_touched_counts_adapters(tiny_model_dir, tiny_adapters, tmp_path):
    from fslm.engine import load_engine

    cfg = dict(STACK, stages=[dict(STACK["stages"][0]), dict(STACK["stages"][1], adapter=str(tiny_adapters["answer"]))])
    engine = load_engine(str(tiny_model_dir))  # its own engine: adapters must not leak into the shared one
    system = StackSystem(Stack(parse_stack_config(cfg), engine))
    assert system.params_touched > engine.params
    assert system.describe()["adapters"] == {"answer": str(tiny_adapters["answer"])}
    assert StackSystem(system.stack, answer_format="raw").params_touched == engine.params  # the base model answers


def test_raw_adapter_answer_format_scores_raw_contexts_under_the_final_adapter(
    tiny_model_dir, tiny_adapters, tiny_data, tmp_path
):
    """ "raw-adapter": the contexts of "raw", scored with the answer stage's adapter on (one trained on raw pairs)."""
    from fslm.engine import load_engine

    cfg = dict(STACK, stages=[dict(STACK["stages"][0]), dict(STACK["stages"][1], adapter=str(tiny_adapters["answer"]))])
    engine = load_engine(str(tiny_model_dir))  # its own engine: adapters must not leak into the shared one
    stack = Stack(parse_stack_config(cfg), engine)
    trained = evaluate(StackSystem(stack, answer_format="raw-adapter"), ["arc_easy", "gsm8k"], out_dir=tmp_path / "ra")
    raw = evaluate(StackSystem(stack, answer_format="raw"), ["arc_easy"])
    assert (
        trained.system == f"stack:{STACK['name']}+raw-adapter-answer" and trained.data["answer_format"] == "raw-adapter"
    )
    arc = [r for r in trained.rows if r["task"] == "arc_easy"]
    for row, plain, item in zip(arc, raw.rows, load_task("arc_easy"), strict=True):
        notes = f"{stack.config.stages[0].display_label}: {row['stages']['facts'].strip()}\n\n"
        direct = engine.score([notes + item.context] * len(item.choices), list(item.continuations), adapter="answer")
        assert row["choice_scores"] == pytest.approx([s.logprob for s in direct], abs=1e-4)
        assert row["choice_scores"] != pytest.approx(plain["choice_scores"], abs=1e-4)  # the adapter is on
    assert (
        StackSystem(stack, answer_format="raw-adapter").params_touched
        > StackSystem(stack, answer_format="raw").params_touched
    )
    gsm = [r for r in trained.rows if r["task"] == "gsm8k"]
    assert gsm and all(r["generation"] is not None for r in gsm)
    plain_stack = Stack(parse_stack_config(STACK), engine)
    with pytest.raises(InputError, match="has no adapter to score with"):
        StackSystem(plain_stack, answer_format="raw-adapter")


def test_compare_two_runs(model_system, tiny_data, tmp_path):
    a = tmp_path / "a"
    evaluate(model_system, ["arc_easy"], out_dir=a)
    result = compare(a, a, out_dir=tmp_path / "cmp")
    assert result["tasks"]["arc_easy"]["diff"] == 0.0 and result["only_a"] == 0
    assert (tmp_path / "cmp" / "compare.md").is_file()
    with pytest.raises(InputError, match="no items.jsonl"):
        compare(tmp_path / "missing", a)


@needs_data
def test_mmlu_limit_spreads_over_subjects():
    items = select_items("mmlu", 57)
    assert len({it.meta["subject"] for it in items}) == 57


@needs_data
def test_fewshot_from_the_split_being_evaluated_is_refused(model_system):
    with pytest.raises(InputError, match="split being evaluated"):
        evaluate(model_system, ["arc_challenge"], limit=1, num_fewshot=1, split="dev")


@needs_data
def test_fewshot_contexts_come_from_the_fewshot_split(model_system, monkeypatch):
    seen = []
    original = model_system.engine.score
    monkeypatch.setattr(model_system.engine, "score", lambda c, x, adapter=None: seen.extend(c) or original(c, x))
    summary = evaluate(model_system, ["openbookqa"], limit=1, num_fewshot=2)
    item = load_task("openbookqa", limit=1)[0]
    assert summary.rows[0]["prompt"] == seen[0] and seen[0].endswith(item.context) and seen[0] != item.context
    assert seen[0].count("\n\n") == 2  # two examples, each followed by a blank line


def test_resuming_with_an_edited_stack_is_refused(tiny_engine, tiny_data, tmp_path):
    out = tmp_path / "s"
    evaluate(StackSystem(Stack(parse_stack_config(STACK), tiny_engine)), ["arc_easy"], limit=1, out_dir=out)
    edited = dict(STACK, stages=[dict(STACK["stages"][0], instruction="List facts briefly."), STACK["stages"][1]])
    with pytest.raises(InputError, match="stack_config_sha256"):
        evaluate(StackSystem(Stack(parse_stack_config(edited), tiny_engine)), ["arc_easy"], limit=1, out_dir=out)


def test_read_rows_reads_a_folder_being_written_without_its_lock(tmp_path):
    from fslm.errors import DataError
    from fslm.evaluate.store import RunStore, read_rows

    out = tmp_path / "run"
    assert read_rows(out) == {}
    with RunStore(out, {"system": "a"}) as store:  # the writer holds the lock; reading needs none
        store.append([{"id": "x/1", "task": "x"}, {"id": "x/2", "task": "x"}])
        with (out / "items.jsonl").open("a") as fh:
            fh.write('{"id": "x/3", "ta')  # the batch in flight
        assert list(read_rows(out)) == ["x/1", "x/2"]
    (out / "items.jsonl").write_text('{"id": "x/1"}\nnot json\n{"id": "x/2"}\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed row"):
        read_rows(out)
