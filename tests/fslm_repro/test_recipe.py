"""The whole issue-5 recipe at smoke scale on tiny models: every step's outputs, a rerun that skips every step, the
report's table rows, and the CLI's error path."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from .conftest import needs_data

pytestmark = needs_data  # the eval step reads the real benchmark files (2 items per task)
# One task of every kind (shared-context choices, long contexts, mc2, per-choice contexts, generation) keeps this
# test short; the recipe's default is every task.
TASKS = ["arc_easy", "hellaswag", "truthfulqa_mc2", "winogrande", "gsm8k"]


def read_rows(recipe, system: str) -> list[dict]:
    return [json.loads(line) for line in (recipe.runs_dir / system / "items.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_run(smoke_world, tmp_path_factory):
    from recipe import Recipe
    from run import run_recipe

    m = smoke_world["models"]
    ship_to = tmp_path_factory.mktemp("package_stacks")  # stands in for fslm/stacks/ (never touched by tests)
    packaged = yaml.safe_load(smoke_world["stack"].read_text())
    for stage in packaged["stages"]:
        stage["adapter"] = f"default/adapters/{stage['name']}"
    (ship_to / "default.yaml").write_text(yaml.safe_dump(packaged))
    recipe = Recipe.for_scale(
        "smoke",
        tmp_path_factory.mktemp("out"),
        tmp_path_factory.mktemp("work"),
        teacher_candidates=[str(m["teacher_a"]), str(m["teacher_b"])],
        big_models=[str(m["big"])],
        data=str(smoke_world["data"]),
        stack=str(smoke_world["stack"]),
        teacher_dtype="float32",
        isolate_eval=False,  # a process per system would double this test's time; isolation is tested below
        warm_cache=False,  # which lane generates what would depend on timing; test_lanes tests the warming
        tasks=TASKS,
        ship_to=ship_to,
        poll_seconds=0.2,
    )
    logs: list[str] = []
    first = run_recipe(recipe, log=logs.append, lanes=2)  # the baselines step in a second process, as on the real run
    return recipe, first, logs


def test_every_step_writes_its_outputs(smoke_run):
    recipe, steps, logs = smoke_run
    out = recipe.out
    assert set(steps["steps"]) == {
        "teachers",
        "distill",
        "finetune",
        "choice",
        "neutral",
        "retrieval",
        "scorer",
        "baselines",
        "select",
        "eval",
        "timing",
        "report",
        "ship",
    }
    assert all(e["status"] == "done" and e["wall_seconds"] > 0 for e in steps["steps"].values())
    assert any(line.startswith("[lanes] baselines,eval in a second process") for line in logs)
    assert not any("[baselines]" in line for line in logs)  # it ran in the lane (whose log goes to stdout), not here
    lane_pids = {s["pid"] for s in steps["steps"]["baselines"]["sessions"]}
    assert lane_pids and os.getpid() not in lane_pids
    assert {s["pid"] for s in steps["steps"]["eval"]["sessions"]} == {os.getpid()} | lane_pids  # both ran eval

    teachers = json.loads((out / "teachers.json").read_text())
    assert len(teachers["candidates"]) == 2 and teachers["chosen"] in recipe.teacher_candidates
    for row in teachers["candidates"]:
        assert row["records"] == recipe.teacher_records and 0 <= row["kept_rate"] <= 1 and row["tokens_per_second"] > 0
        assert (
            len(row["loadavg"]) == 2 and row["threads"] >= 1
        )  # speed decides feasibility: the load it was measured under
    assert "**Chosen:" in (out / "teachers.md").read_text()

    distilled = json.loads((out / "distill.json").read_text())
    assert distilled["records"] == recipe.distill_records and distilled["kept"] >= 1
    assert distilled["teacher_ref"] == teachers["chosen"]

    tuned = json.loads((out / "finetune.json").read_text())
    assert set(tuned["adapter_bytes"]) == {"intent", "facts", "reasoning", "answer"}
    assert tuned["adapter_bytes_total"] <= tuned["budget_bytes"] == 10_000_000
    from safetensors import safe_open

    with safe_open(str(recipe.trained_dir / "adapters" / "answer" / "adapter_model.safetensors"), framework="pt") as fh:
        assert all(str(fh.get_tensor(k).dtype) == "torch.float16" for k in fh.keys())

    index = json.loads((out / "systems.json").read_text())
    expected = {
        "stack-trained",
        "stack-trained-choice",
        "stack-trained-neutral",
        "base",
        "base-stackformat",
        "stack-answer-only",
        "stack-promptonly",
        "model-big",
        "stack-no-intent",
        "stack-no-facts",
        "stack-no-reasoning",
        "stack-2stage",
        "stack-notes-raw",
        "stack-retrieval-raw",
        "stack-retrieval",
        "stack-retrieval-tail-raw",
        "model-big-retrieval-tail-raw",
        "stack-scorer",
    }
    assert set(index["systems"]) == expected
    for name in expected:
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        assert summary["n_items"] == index["items_per_system"] == 2 * len(TASKS) and list(summary["tasks"]) == TASKS
    no_facts = json.loads((out / "runs" / "stack-no-facts" / "summary.json").read_text())
    assert no_facts["stages"] == ["intent", "reasoning", "answer"]
    assert json.loads((out / "runs" / "stack-2stage" / "summary.json").read_text())["stages"] == ["facts", "answer"]
    for name in (
        "stack-answer-only",
        "base-stackformat",
    ):  # the final scorer with no earlier texts, with and without its adapter
        assert json.loads((out / "runs" / name / "summary.json").read_text())["stages"] == ["answer"]
        rows = [json.loads(line) for line in (out / "runs" / name / "items.jsonl").read_text().splitlines()]
        assert rows and all(
            set(r["stages"]) <= {"answer"} for r in rows
        )  # generation tasks: the answer stage's own text
    assert json.loads((out / "runs" / "base-stackformat" / "run.json").read_text())["identity"]["system"].endswith(
        "-no-adapters"
    )
    # the base model's own raw scoring, with the trained stack's texts in front (same texts: from the stage cache)
    notes = [json.loads(line) for line in (out / "runs" / "stack-notes-raw" / "items.jsonl").read_text().splitlines()]
    trained = [json.loads(line) for line in (out / "runs" / "stack-trained" / "items.jsonl").read_text().splitlines()]
    assert json.loads((out / "runs" / "stack-notes-raw" / "summary.json").read_text())["answer_format"] == "raw"
    assert [r["stages"] for r in notes if r["task"] != "gsm8k"] == [
        {k: v for k, v in r["stages"].items() if k != "answer"} for r in trained if r["task"] != "gsm8k"
    ]
    assert (
        "- Do the texts help a plain scorer: base model in its own format reading the trained stack's texts vs base model alone"
        in (out / "RESULTS.md").read_text()
    )


def test_timing_step_times_every_reported_system_together_without_the_stage_cache(smoke_run):
    recipe, steps, _ = smoke_run
    timing = json.loads((recipe.out / "timing.json").read_text())
    index = json.loads((recipe.out / "systems.json").read_text())
    assert timing["setup"]["systems"] == list(index["systems"])  # every reported system, in report order
    assert timing["items_per_system"] == recipe.timing_limit * len(TASKS) and timing["cpu"] and timing["threads"] >= 1
    assert timing["systems"]["base"]["x_base"] == 1.0
    for name, row in timing["systems"].items():
        run = json.loads((recipe.out / "timing" / name / "run.json").read_text())
        assert [s.get("stage_cache") for s in run["sessions"]] == [None]  # one session, nothing reused: real seconds
        assert run["sessions"][0]["cpu"] == timing["cpu"] and run["sessions"][0]["threads"] == timing["threads"]
        summary = json.loads((recipe.out / "timing" / name / "summary.json").read_text())
        assert (
            summary["n_items"] == timing["items_per_system"]
            and row["seconds_per_item"] == summary["cost"]["seconds_per_item"] > 0
        )
        assert row["x_base"] == round(row["seconds_per_item"] / timing["systems"]["base"]["seconds_per_item"], 2)
    cost = (recipe.out / "RESULTS.md").read_text().split("## Cost")[1]
    trained = timing["systems"]["stack-trained"]
    assert "| trained stack | " in cost and f" | {trained['seconds_per_item']} | {trained['x_base']} | " in cost
    assert "Timed together: the `timing` step ran every system on the same" in cost
    assert not (recipe.out / ".timing.tmp").exists()


def test_a_stopped_timing_step_keeps_the_systems_it_finished_and_times_the_rest(smoke_run, tmp_path, monkeypatch):
    import shutil
    from dataclasses import replace

    import report
    import timing_step

    recipe, _, _ = smoke_run
    out = tmp_path / "out"
    shutil.copytree(recipe.out, out, ignore=shutil.ignore_patterns("timing", "timing.json"))
    copy = replace(recipe, out=out)
    real, timed = timing_step.evaluate_system, []

    def stops_at_the_third(spec, tasks, limit, folder, *args):
        if len(timed) == 2:
            folder.mkdir(parents=True)
            (folder / "items.jsonl").write_text('{"half": "written"}\n')  # an unfinished timing left behind
            raise KeyboardInterrupt
        timed.append(spec.name)
        real(spec, tasks, limit, folder, *args)

    # The step picks its thread count from the machine's load; a count that changed between the two sittings would
    # (rightly) re-time everything, so the test fixes it.
    monkeypatch.setattr(timing_step, "pick_threads", lambda: 1)
    monkeypatch.setattr(timing_step, "evaluate_system", stops_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        timing_step.run(copy, log=lambda _: None)
    assert not (out / "timing.json").exists() and not (out / "timing").exists()
    first_two = list(timed)

    monkeypatch.setattr(timing_step, "evaluate_system", lambda spec, *a: (timed.append(spec.name), real(spec, *a)))
    data = timing_step.run(copy, log=lambda _: None)
    names = data["setup"]["systems"]
    assert timed == first_two + names[2:]  # the third system timed again from its first item, the first two kept
    assert data["resumed"] == sorted(first_two) and timing_step.done(copy)
    assert all(data["systems"][n]["seconds_per_item"] > 0 and data["systems"][n]["timed_at"] for n in names)
    assert json.loads((out / "timing" / names[2] / "summary.json").read_text())["n_items"] == data["items_per_system"]
    assert not (out / ".timing.tmp").exists() and not (out / "timing" / timing_step.CONDITIONS).exists()
    report.run(copy, log=lambda _: None)
    assert (
        f"resumed once stopped ({', '.join(sorted(first_two))} timed by an earlier attempt"
        in (out / "RESULTS.md").read_text()
    )


def test_timing_from_another_cpu_or_thread_count_is_not_resumed(tmp_path):
    import timing_step

    tmp = tmp_path / ".timing.tmp"
    conditions = {"setup": {"systems": ["base"], "limit": 1, "tasks": ["arc_easy"]}, "cpu": "some CPU", "threads": 2}
    assert timing_step._resumable(tmp, conditions, 1) == set()
    (tmp / "base").mkdir()
    (tmp / "base" / "summary.json").write_text(json.dumps({"n_items": 1}))
    assert timing_step._resumable(tmp, conditions, 1) == {"base"}
    assert timing_step._resumable(tmp, {**conditions, "threads": 1}, 1) == set() and not (tmp / "base").exists()


def test_wall_time_table_names_the_cpus_each_step_ran_on(smoke_run):
    from fslm.cpu import cpu_model

    recipe, steps, _ = smoke_run
    assert all(s["cpu"] == cpu_model() for e in steps["steps"].values() for s in e["sessions"])
    table = (recipe.out / "RESULTS.md").read_text().split("## Wall time per step")[1]
    assert (
        "| distill | done | " in table and table.count(f" | {cpu_model()} |") == len(steps["steps"]) - 1
    )  # ship starts after it
    assert "| report | running | " in table  # the report is written while its own session runs


def test_retrieval_step_reads_passages_from_a_corpus_without_any_evaluated_item(smoke_run):
    from fslm.tasks import load_task

    recipe, _, _ = smoke_run
    out = recipe.out
    info = json.loads((out / "retrieval.json").read_text())
    for corpus in info["corpora"].values():
        assert corpus["passages"] == sum(s["kept"] for s in corpus["sources"].values()) > 0
        assert corpus["sources"]["alpaca"]["read"] == 7  # the recipe's own Alpaca file
    tail = info["corpora"]["tail"]
    assert tail["eval_tail"] == 300 and tail["passages"] > info["corpora"]["train-dev"]["passages"]
    assert "boolq" in tail["sources"] and "boolq" not in info["corpora"]["train-dev"]["sources"]  # single-split tasks
    questions = {" ".join(it.question.split()).casefold() for t in TASKS for it in load_task(t, limit=2)}
    for system, stages in (
        ("stack-retrieval-raw", ["related", "answer"]),
        ("stack-retrieval", ["related", "answer"]),
        ("stack-retrieval-tail-raw", ["related", "answer"]),
    ):
        assert json.loads((out / "runs" / system / "summary.json").read_text())["stages"] == stages
        for row in read_rows(recipe, system):
            passages = row["stages"]["related"]
            assert passages.startswith("[1] ") or passages == "(no related passage found)"
            assert not any(q in " ".join(passages.split()).casefold() for q in questions if len(q) > 30)
    assert json.loads((out / "runs" / "stack-retrieval-raw" / "summary.json").read_text())["answer_format"] == "raw"
    text = (out / "RESULTS.md").read_text()
    assert (
        "- Do retrieved passages help a plain scorer: base model in its own format reading retrieved solved questions vs"
        in text
    )
    assert (
        "- Do retrieved passages help the answer stage (same format): retrieved solved questions -> answer stage"
        in text
    )
    assert (
        "- Attempt 4 (retrieval): retrieved solved questions -> answer stage (no adapters) vs base model alone" in text
    )


def test_choice_step_retrains_only_the_answer_stage_on_train_split_questions(smoke_run):
    from fslm.config import load_stack_config
    from fslm.tasks import load_task

    recipe, _, _ = smoke_run
    info = json.loads((recipe.out / "choice.json").read_text())
    assert (
        info["questions"] == recipe.choice_records
        and info["train_records"] == info["questions"] + info["alpaca_records"]
    )
    rows = [json.loads(line) for line in (recipe.work / "choice" / "self_targets.jsonl").read_text().splitlines()]
    eval_ids = {it.id for task in ("arc_challenge", "mmlu", "openbookqa") for it in load_task(task)}
    assert rows and not {r["id"] for r in rows} & eval_ids  # never an evaluation item
    assert all(set(r["targets"]) == {"intent", "facts", "reasoning", "answer"} for r in rows)
    cfg = load_stack_config(recipe.out / "trained_stack_choice" / "stack.yaml")
    paths = {s.name: cfg.adapter_path(s).resolve() for s in cfg.stages}
    assert (
        paths["facts"] == (recipe.trained_dir / "adapters" / "facts").resolve()
    )  # earlier stages: attempt 1's adapters
    new = (paths["answer"] / "adapter_model.safetensors").read_bytes()
    assert new != (recipe.trained_dir / "adapters" / "answer" / "adapter_model.safetensors").read_bytes()


def test_neutral_step_redistills_only_reasoning_without_the_gold_and_retrains_reasoning_and_answer(smoke_run):
    from fslm.config import load_stack_config
    from fslm.distill.runner import shows_gold

    recipe, _, _ = smoke_run
    first = {r["id"]: r for r in map(json.loads, (recipe.out / "distilled.jsonl").read_text().splitlines())}
    again = [json.loads(line) for line in (recipe.work / "neutral" / "distilled.jsonl").read_text().splitlines()]
    assert {r["id"] for r in again} == set(first)
    reused = [r for r in again if r.get("reused")]
    assert len(reused) == sum(r["kept"] for r in first.values()) >= 1
    for r in reused:  # intent and facts are attempt 1's texts, word for word
        assert all(r["targets"][s] == first[r["id"]]["targets"][s] for s in ("intent", "facts"))
    cfg = load_stack_config(recipe.out / "trained_stack_neutral" / "stack.yaml")
    draft = next(s for s in cfg.stages if s.name == "reasoning")
    assert not shows_gold(draft) and "Do not give the final answer" in draft.instruction
    paths = {s.name: cfg.adapter_path(s).resolve() for s in cfg.stages}
    for stage in ("intent", "facts"):
        assert paths[stage] == (recipe.trained_dir / "adapters" / stage).resolve()
    for stage in ("reasoning", "answer"):
        assert paths[stage].parent == (recipe.out / "trained_stack_neutral" / "adapters").resolve()
    info = json.loads((recipe.out / "neutral.json").read_text())
    assert info["redistilled"] == ["reasoning"] and set(info["stages"]) == {"reasoning", "answer"}
    assert info["reused"] == len(reused)


def test_scorer_step_trains_the_retrieval_stacks_answer_stage_on_raw_pairs_never_on_evaluated_or_heldout_items(
    smoke_run,
):
    import scorer_step

    from fslm.config import load_stack_config
    from fslm.evaluate import select_items
    from fslm.evaluate.heldout import HELDOUT
    from fslm.tasks import build_context, load_task

    recipe, _, _ = smoke_run
    info = json.loads((recipe.out / "scorer.json").read_text())
    rows = [json.loads(line) for line in (recipe.work / "scorer" / "pairs.jsonl").read_text().splitlines()]
    choice = [t for t in TASKS if t != "gsm8k"]
    share = -(-recipe.scorer_records // len(choice))
    assert info["pairs"] == len(rows) and info["per_task"] == {t: share for t in choice}  # an equal share per task
    assert info["answer_stage"]["examples"] + info["answer_stage"]["skipped_too_long"] == len(rows)
    evaluated = {it.id for t in TASKS for it in select_items(t, 300)}
    heldout = {it.id for t in TASKS for it in select_items(t, 100, HELDOUT)}
    assert not {r["id"] for r in rows} & (evaluated | heldout)
    items = {
        it.id: it
        for t in choice
        for split in ("validation", "test", "train", "dev")
        for it in _load(load_task, t, split)
    }
    for row in rows:  # the evaluation's raw context after the passages; the gold option's continuation
        item = items[row["id"]]
        gold = int(item.gold)
        assert row["context"].startswith("Related solved questions: ")
        assert row["context"].endswith(build_context(item, (), choice=gold if item.contexts else None))
        assert row["continuation"] == item.continuations[gold]
        passages = row["context"].split("\n\n")[0]
        assert (
            " ".join(item.question.split()).casefold() not in " ".join(passages.split()).casefold()
        )  # never its own passage
    cfg = load_stack_config(scorer_step.stack_path(recipe))
    assert [s.name for s in cfg.stages] == ["related", "answer"] and cfg.stages[0].adapter is None
    adapter = cfg.adapter_path(cfg.stages[1])
    assert adapter.resolve() == (recipe.out / "trained_stack_scorer" / "adapters" / "answer").resolve()
    summary = json.loads((recipe.out / "runs" / "stack-scorer" / "summary.json").read_text())
    assert summary["answer_format"] == "raw-adapter" and summary["stages"] == ["related", "answer"]
    text = (recipe.out / "RESULTS.md").read_text()
    assert (
        "- Attempt 5 (trained scorer): retrieved solved questions, corpus with unevaluated test items -> answer adapter"
        in text
    )
    assert "- What training the scorer adds (same passages, same format): " in text
    assert "- Against a larger single model: " in text and "(Not like for like: attempt 5's adapter saw" in text


def test_a_larger_model_reads_the_same_passages_as_attempt_5(smoke_run):
    from recipe import slug
    from retrieval_step import reader_stack_path

    from fslm.config import load_stack_config

    recipe, _, _ = smoke_run
    big = recipe.big_models[0]
    name = f"model-{slug(big)}-retrieval-tail-raw"
    assert load_stack_config(reader_stack_path(recipe, big)).base_model == big
    reader, student = read_rows(recipe, name), read_rows(recipe, "stack-retrieval-tail-raw")
    assert [r["stages"] for r in reader] == [r["stages"] for r in student] and reader[0]["stages"]["related"]
    assert [r["choice_scores"] for r in reader if r["choice_scores"]] != [
        r["choice_scores"] for r in student if r["choice_scores"]
    ]
    assert json.loads((recipe.runs_dir / name / "summary.json").read_text())["answer_format"] == "raw"
    text = (recipe.out / "RESULTS.md").read_text()
    assert (
        f"- Do retrieved passages help a larger model: {big} in its own format reading retrieved solved questions"
        in text
    )
    assert "- Against a larger model reading the same passages in the same format: " in text
    from dataclasses import replace

    from eval_step import systems

    kinds = lambda r: [s.kind for s in systems(r)].count("model-retrieval")  # noqa: E731
    assert kinds(recipe) == 1 and kinds(replace(recipe, passage_readers=0)) == 0
    assert kinds(replace(recipe, big_models=[big, "other-model"])) == 1  # the first big model only, by default


def _load(load_task, task, split):
    from fslm.errors import FslmError

    try:
        return load_task(task, split=split)
    except FslmError:  # the task has no such split
        return []


def test_select_chooses_an_attempt_on_heldout_items_only(smoke_run):
    from fslm.evaluate import select_items
    from fslm.evaluate.heldout import HELDOUT

    recipe, _, _ = smoke_run
    info = json.loads((recipe.out / "select.json").read_text())
    assert info["attempts"] == ["stack-trained", "stack-trained-choice", "stack-trained-neutral"]
    assert info["context"] == [
        "base",
        "base-stackformat",
        "stack-answer-only",
        "stack-retrieval-raw",
        "stack-retrieval",
        "stack-retrieval-tail-raw",
        "stack-scorer",
    ]
    best = max(info["heldout_macro"][n] for n in info["attempts"])
    assert info["chosen"] == next(n for n in info["attempts"] if info["heldout_macro"][n] == best)  # ties: the earlier
    assert info["beaten_by_context"] == [n for n in info["context"] if info["heldout_macro"][n] > best]
    test_ids = {
        str(r["id"]) for r in map(json.loads, (recipe.out / "runs" / "base" / "items.jsonl").read_text().splitlines())
    }
    for name in info["attempts"] + info["context"]:
        run = recipe.out / "select" / name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["split"] == HELDOUT and summary["n_items"] == info["items_per_system"] == 2 * len(TASKS)
        assert summary["macro_acc"] == info["heldout_macro"][name]
        ids = [json.loads(line)["id"] for line in (run / "items.jsonl").read_text().splitlines()]
        assert ids == [it.id for t in TASKS for it in select_items(t, 2, HELDOUT)] and not set(ids) & test_ids
    text = (recipe.out / "RESULTS.md").read_text()
    assert "## Which attempt ships (chosen on held-out items)" in text and "**(chosen)**" in text
    assert "| held-out (select step) | 10 |" in text and "| test (the items above) | 10 |" in text  # the sum-rule check
    assert "| system | held-out macro | held-out vs base (95% CI) | test macro (above) |" in text
    vs_base = json.loads((recipe.out / "compare" / "heldout-stack-trained-vs-base" / "compare.json").read_text())[
        "tasks"
    ]["macro"]
    assert vs_base["n"] == info["items_per_system"]
    assert abs(vs_base["diff"] - (info["heldout_macro"]["stack-trained"] - info["heldout_macro"]["base"])) < 1e-3


def test_ship_puts_the_chosen_adapters_where_the_packaged_stack_names_them(smoke_run):
    from select_step import chosen_stack
    from ship_step import run as run_ship

    from fslm.config import check_adapters, load_stack_config

    recipe, _, _ = smoke_run
    chosen = load_stack_config(chosen_stack(recipe))
    packaged = load_stack_config(recipe.ship_to / "default.yaml")
    check_adapters(packaged)  # every stage's adapter folder is complete
    for stage, trained in zip(packaged.stages, chosen.stages, strict=True):
        shipped = packaged.adapter_path(stage) / "adapter_model.safetensors"
        assert shipped.read_bytes() == (chosen.adapter_path(trained) / "adapter_model.safetensors").read_bytes()
    assert not [
        p for p in (recipe.ship_to / "default" / "adapters").iterdir() if p.name.startswith(".")
    ]  # no temp folders left

    wrong = yaml.safe_load((recipe.ship_to / "default.yaml").read_text())
    wrong["stages"][1]["adapter"] = "elsewhere/facts"
    other = recipe.ship_to.parent / (recipe.ship_to.name + "-wrong")
    other.mkdir(exist_ok=True)
    (other / "default.yaml").write_text(yaml.safe_dump(wrong))
    from dataclasses import replace

    from fslm.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"stages\.1\.adapter is 'elsewhere/facts'; expected 'default/adapters/facts'"
    ):
        run_ship(replace(recipe, ship_to=other), log=lambda _: None)


def test_shipping_an_attempt_with_other_prompts_rewrites_the_packaged_stack(smoke_run, tmp_path):
    """Attempt 3 changed attempt 1's reasoning and answer prompts: adapters are only right with their own prompts, so
    switching between the two rewrites the packaged YAML."""
    import shutil
    from dataclasses import replace

    import ship_step

    from fslm.config import load_stack_config

    recipe, _, _ = smoke_run
    out, ship_to = tmp_path / "out", tmp_path / "stacks"
    shutil.copytree(recipe.out, out)
    shutil.copytree(recipe.ship_to, ship_to)
    info = json.loads((out / "select.json").read_text())
    other = "stack-trained" if info["chosen"] == "stack-trained-neutral" else "stack-trained-neutral"
    (out / "select.json").write_text(json.dumps({**info, "chosen": other}))
    moved = replace(recipe, out=out, ship_to=ship_to)
    assert not ship_step.done(moved)
    ship_step.run(moved, log=lambda _: None)
    assert ship_step.done(moved)
    folder = "trained_stack_neutral" if other == "stack-trained-neutral" else "trained_stack"
    chosen = load_stack_config(out / folder / "stack.yaml")
    packaged = load_stack_config(ship_to / "default.yaml")
    assert packaged.name == load_stack_config(recipe.ship_to / "default.yaml").name and [
        s.instruction for s in packaged.stages
    ] == [s.instruction for s in chosen.stages]
    assert [s.adapter for s in packaged.stages] == [f"default/adapters/{s.name}" for s in packaged.stages]
    for stage, trained in zip(packaged.stages, chosen.stages, strict=True):
        assert (packaged.adapter_path(stage) / "adapter_model.safetensors").read_bytes() == (
            chosen.adapter_path(trained) / "adapter_model.safetensors"
        ).read_bytes()


def test_report_has_the_table_and_numbers_from_the_runs(smoke_run):
    recipe, _, _ = smoke_run
    text = (recipe.out / "RESULTS.md").read_text()
    assert (recipe.out / "results.png").stat().st_size > 1000
    for label in (
        "| trained stack |",
        "| same stack, no adapters |",
        "| trained stack without facts |",
        "| trained stack 2 stages",
    ):
        assert label in text
    base = json.loads((recipe.out / "runs" / "base" / "summary.json").read_text())
    assert f"**{100 * base['macro_acc']:.1f}**" in text
    swing = re.search(
        r"macro without (\w+): the task whose accuracy differs most between systems left out \(here from ([\d.]+) to ([\d.]+)%",
        text,
    )
    accs = [
        100 * json.loads(p.read_text())["tasks"][swing[1]]["acc"] for p in (recipe.out / "runs").glob("*/summary.json")
    ]
    assert (swing[2], swing[3]) == (f"{min(accs):.1f}", f"{max(accs):.1f}")
    assert "Smoke scale" in text and "## Example traces" in text and "| finetune | done |" in text
    cmp = json.loads((recipe.out / "compare" / "stack-trained-vs-base" / "compare.json").read_text())["tasks"]["macro"]
    headline = next(line for line in text.splitlines() if line.startswith("- trained stack vs base model alone"))
    assert ("the CI excludes zero" in headline) == (cmp["ci95"][0] > 1e-9 or cmp["ci95"][1] < -1e-9)
    assert ("CI includes zero" in headline) != ("the CI excludes zero" in headline)
    assert "- Same prompt format: trained stack vs base model in the answer stage's format" in text
    assert (
        "- Attempt: trained stack with reasoning notes that pick no answer (unhinted teacher) vs base model alone"
        in text
    )
    assert "- Ablation: trained stack answer stage alone (no earlier texts) vs the full trained stack" in text


def test_rerun_skips_every_finished_step(smoke_run):
    from run import run_recipe

    recipe, _, _ = smoke_run
    before = (recipe.out / "RESULTS.md").stat().st_mtime_ns
    logs: list[str] = []
    from recipe import STEPS

    steps = run_recipe(recipe, log=logs.append)
    assert set(steps["steps"]) == set(STEPS)
    assert [line for line in logs if "skipped" in line] == [
        f"[{s}] already done (outputs found); skipped" for s in STEPS
    ]
    assert all(e["sessions"][-1]["status"] == "skipped" for e in steps["steps"].values())
    assert (recipe.out / "RESULTS.md").stat().st_mtime_ns == before


def test_ablations_reuse_the_stage_outputs_they_share_with_the_trained_stack(smoke_run):
    recipe, _, _ = smoke_run

    def cache(name):
        return json.loads((recipe.runs_dir / name / "run.json").read_text())["sessions"][0]["stage_cache"]

    n = len(read_rows(recipe, "stack-trained"))
    generated = sum(1 for r in read_rows(recipe, "stack-trained") if r["task"] == "gsm8k")  # the answer stage generates
    assert cache("stack-trained") == {
        "path": str(recipe.work / "stage_outputs.sqlite"),
        "hits": 0,
        "misses": 3 * n + generated,
    }
    # without reasoning: intent and facts are asked exactly what the full stack asked them; the answer stage is not
    assert cache("stack-no-reasoning")["hits"] == 2 * n and cache("stack-no-reasoning")["misses"] == generated
    trained, ablated = read_rows(recipe, "stack-trained"), read_rows(recipe, "stack-no-reasoning")
    assert [r["stages"]["facts"] for r in trained] == [r["stages"]["facts"] for r in ablated]
    assert "stage_cache" not in json.loads((recipe.runs_dir / "base" / "run.json").read_text())["sessions"][0]
    cost = (recipe.out / "RESULTS.md").read_text().split("## Cost")[1]
    share = round(100 * 2 * n / (2 * n + generated))
    assert (
        "| trained stack without reasoning (intent still runs; no stage reads it) | " in cost
        and f" | {share}% |" in cost
    )
    assert "| base model alone (" in cost and " | — |" in cost  # a model alone has no stages to reuse

    from fslm.stack_cache import StageCache

    copy = recipe.out / "stage_outputs.jsonl"  # the text copy that travels with the results
    with StageCache(recipe.work / "stage_outputs.sqlite") as cache:
        assert len(copy.read_text().splitlines()) == len(cache) >= 3 * n + generated


def test_teacher_measurements_from_another_setup_are_measured_again(smoke_run, tmp_path):
    """A work dir measured with older teacher prompts must not decide the teacher (a stale row skipped the measure)."""
    import dataclasses
    import shutil

    import teachers_step
    from recipe import slug

    recipe, _, _ = smoke_run
    assert teachers_step.done(recipe)
    copy = dataclasses.replace(recipe, work=tmp_path / "work")
    shutil.copytree(recipe.work / "teachers", copy.work / "teachers")
    cfg = copy.stack_config()
    ref = copy.teacher_candidates[0]
    saved = teachers_step.measure(copy, cfg, ref)
    assert saved["setup"] == teachers_step.setup(copy, cfg)  # same setup: the saved row, not a new measurement
    assert saved == json.loads((recipe.work / "teachers" / f"{slug(ref)}.json").read_text())

    stages = [
        s.model_copy(update={"teacher_prompt": "Question: {prompt}\nName one fact."}) if s.name == "facts" else s
        for s in cfg.stages
    ]
    changed = cfg.model_copy(update={"stages": stages})
    fresh = teachers_step.measure(copy, changed, ref)
    # a row read back would carry the old setup; the candidate's texts were distilled again under the new one
    assert fresh["setup"] == teachers_step.setup(copy, changed) != saved["setup"]
    sidecar = json.loads((copy.work / "teachers" / f"{slug(ref)}.jsonl.identity.json").read_text())
    assert sidecar == fresh["setup"]["distill"]
    legacy = {k: v for k, v in saved.items() if k != "setup"}  # rows written before setups were recorded
    (copy.work / "teachers" / f"{slug(ref)}.json").write_text(json.dumps(legacy))
    assert teachers_step.measure(copy, cfg, ref)["setup"] == saved["setup"]


def test_a_teacher_choice_the_distilled_data_used_is_not_measured_again(smoke_run, tmp_path):
    """Rows from an older setup are re-measured only while nothing depends on them: once the distilled records name
    the chosen teacher, re-measuring could switch teachers under the data every later step was built from."""
    import dataclasses
    import shutil

    import teachers_step

    recipe, _, _ = smoke_run
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    data = json.loads((recipe.out / "teachers.json").read_text())
    for row in data["candidates"]:
        row["setup"] = {"distill": {"stages": "an older setup"}}
    (out / "teachers.json").write_text(json.dumps(data))
    copy = dataclasses.replace(recipe, out=out, work=work)
    assert not teachers_step.done(copy)  # stale rows, no distilled data yet: measure again
    shutil.copyfile(recipe.out / "distilled.jsonl", out / "distilled.jsonl")
    assert teachers_step.committed(copy) and teachers_step.done(copy)
    data["chosen"] = next(r["teacher"] for r in data["candidates"] if r["teacher"] != data["chosen"])
    (out / "teachers.json").write_text(json.dumps(data))
    assert not teachers_step.done(copy)  # the data came from another teacher than the file names: not this choice


def test_cli_refuses_other_settings_and_unknown_steps(smoke_run):
    import run as recipe_cli
    import typer
    from typer.testing import CliRunner

    recipe, _, _ = smoke_run
    app = typer.Typer()
    app.command()(recipe_cli.main)
    result = CliRunner().invoke(app, ["--scale", "smoke", "--out", str(recipe.out), "--only", "bogus"])
    assert result.exit_code == 2 and "unknown step" in result.output
    result = CliRunner().invoke(
        app,
        ["--scale", "smoke", "--out", str(recipe.out), "--work", str(recipe.work), "--limit", "3", "--only", "report"],
    )
    assert result.exit_code == 2 and "other settings" in result.output and "eval_limit" in result.output


def test_isolated_evaluation_reports_its_own_peak_rss(smoke_world, tmp_path):
    """ru_maxrss never goes down, so systems evaluated one after another in one process would all report the
    largest peak so far; the recipe evaluates each in a spawned process."""
    import resource

    import numpy as np
    from eval_step import SystemSpec, evaluate_system

    ballast = np.ones(400 * 2**20 // 8)  # +400 MB in THIS process only
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spec = SystemSpec("model-big", "big", "model", model=str(smoke_world["models"]["big"]))
    evaluate_system(spec, ["arc_easy"], 1, tmp_path / "run", isolate=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_items"] == 1 and summary["cost"]["peak_rss_mb"] < parent_peak_mb - 300
    del ballast


def test_report_names_systems_not_evaluated_yet(smoke_run, tmp_path):
    """The report can run while the eval step is still going: unfinished systems are listed, not tabulated."""
    import shutil
    from dataclasses import replace

    import report

    recipe, _, _ = smoke_run
    out = tmp_path / "out"
    shutil.copytree(recipe.out, out)
    summary = out / "runs" / "stack-no-facts" / "summary.json"
    partial = json.loads(summary.read_text())
    summary.write_text(
        json.dumps({**partial, "n_items": partial["n_items"] - 1})
    )  # as if the run stopped one item short
    (out / "ANALYSIS.md").write_text("## Analysis\n\nWritten from the traces.\n")
    report.run(replace(recipe, out=out), log=lambda _: None)
    text = (out / "RESULTS.md").read_text()
    assert "**Not evaluated yet** (rerun the recipe to finish them): trained stack without facts." in text
    assert "| trained stack without facts |" not in text and "| trained stack without intent |" in text
    assert "## Analysis\n\nWritten from the traces." in text


def test_status_reports_a_finished_run_and_a_partial_one(smoke_run, tmp_path):
    import shutil
    from dataclasses import replace

    from status import render, status

    recipe, _, _ = smoke_run
    done = status(recipe)
    assert set(done["steps"].values()) == {"done"}
    assert (done["distill"]["written"], done["distill"]["selected"], done["distill"]["hours_left"]) == (
        recipe.distill_records,
    ) * 2 + (0,)
    assert {r["system"] for r in done["runs"] if r["step"] == "eval"} >= {"stack-trained", "stack-no-facts"}
    assert all(r["items"] == r["expected"] and r["hours_left"] in (0, None) and not r["busy"] for r in done["runs"])

    out = tmp_path / "out"
    shutil.copytree(recipe.out, out)
    items = out / "runs" / "stack-no-facts" / "items.jsonl"
    items.write_text("".join(items.read_text().splitlines(keepends=True)[:-3]))  # as if stopped 3 items short
    partial = status(replace(recipe, out=out))
    row = next(r for r in partial["runs"] if r["system"] == "stack-no-facts")
    assert row["items"] == row["expected"] - 3 and row["seconds_per_item"] > 0
    assert row["hours_left"] == round(3 * row["seconds_per_item"] / 3600, 2)
    assert f"{row['expected'] - 3:>5}/{row['expected']:<5}" in render(partial)

    distilled = out / "distilled.jsonl"
    records = [json.loads(line) for line in distilled.read_text().splitlines()]
    distilled.write_text("".join(json.dumps(r) + "\n" for r in records[:-2]))  # two records still to distill
    rate = status(replace(recipe, out=out))["distill"]
    teacher_seconds = [r["seconds"]["total"] for r in records[:-2][-64:] if r["seconds"].get("total")]
    assert rate["written"] == recipe.distill_records - 2 and rate["teacher_seconds_per_record"] == round(
        sum(teacher_seconds) / len(teacher_seconds), 2
    )
    assert rate["hours_left"] == round(2 * sum(teacher_seconds) / len(teacher_seconds) / 3600, 2)
    assert f"distill: {recipe.distill_records - 2}/{recipe.distill_records} records, " in render(
        status(replace(recipe, out=out))
    )


def test_report_before_the_eval_step_shows_the_baselines_so_far(smoke_run, tmp_path):
    """With --lanes 2 the baselines finish long before the trained stack: the report can run on them alone."""
    import shutil
    from dataclasses import replace

    import report

    recipe, _, _ = smoke_run
    out = tmp_path / "out"
    shutil.copytree(recipe.out, out)
    (out / "systems.json").unlink()  # the eval step has not started
    (out / "runs" / "stack-trained" / "summary.json").unlink()
    report.run(replace(recipe, out=out), log=lambda _: None)
    text = (out / "RESULTS.md").read_text()
    assert "**Not evaluated yet** (rerun the recipe to finish them): trained stack." in text
    assert "| same stack, no adapters |" in text and "## Example traces" not in text
    assert "What training adds" not in text  # needs the trained stack


def test_wall_time_table_counts_only_the_sessions_that_worked_on_a_step(tmp_path):
    from recipe import Recipe
    from report_cost import wall_time_section

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work")
    done = {"status": "done", "cpu": "CPU A"}
    steps = {
        "distill": {
            "status": "done",
            "wall_seconds": 90,
            "sessions": [done, {"status": "skipped"}, {"status": "skipped"}],
        }
    }
    row = next(line for line in wall_time_section(recipe, steps) if line.startswith("| distill |"))
    assert row == "| distill | done | 1m30s | 1 | CPU A |"


def test_wall_time_table_says_off_for_steps_the_settings_turn_off(smoke_run, tmp_path):
    import shutil
    from dataclasses import replace

    import report

    recipe, _, _ = smoke_run
    out = tmp_path / "out"
    shutil.copytree(recipe.out, out)
    report.run(replace(recipe, out=out, choice_records=0), log=lambda _: None)
    table = (out / "RESULTS.md").read_text().split("## Wall time per step")[1]
    assert "| choice | off |" in table and "| finetune | done |" in table
