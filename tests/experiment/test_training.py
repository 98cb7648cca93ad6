"""Training steps run through the library verbs, each in its own process, before the systems that use them."""

from __future__ import annotations

import json

import pytest
import yaml

from fslm.experiment import ExperimentError, build_plan, load_spec, run_experiment

from .conftest import write_spec

FAST = {"epochs": 2, "batch_size": 4, "rank": 2, "alpha": 4, "threads": 1, "max_length": 128, "save_every": 5}


def stack_dict(model_dir) -> dict:
    return {
        "name": "tiny2",
        "base_model": str(model_dir),
        "max_prompt_tokens": 256,
        "stages": [
            {"name": "intent", "instruction": "Restate the question.", "generation": {"max_new_tokens": 8}},
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "intent"],
                "generation": {"max_new_tokens": 8},
            },
        ],
    }


def distilled(n: int) -> str:
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"What is {i} plus {i}?",
            "kept": True,
            "filtered": [],
            "hinted": True,
            "targets": {"intent": f"The user wants {i} plus {i}.", "answer": f"It is {2 * i}."},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_finetune_then_evaluate_the_trained_stack_and_its_variant(tiny_model_dir, tiny_data, tmp_path):
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(stack_dict(tiny_model_dir)))
    (tmp_path / "data.jsonl").write_text(distilled(8))
    spec = write_spec(
        tmp_path,
        {
            "name": "train",
            "evaluation": {"tasks": ["arc_easy"]},
            "training": {"trained": {"finetune": {"stack": "stack.yaml", "data": "data.jsonl", "options": FAST}}},
            "systems": {
                "stack-trained": {"stack": "trained"},
                "answer-only": {"from": "stack-trained", "patch": {"keep": ["answer"]}},
            },
            "comparisons": [["stack-trained", "answer-only"]],
        },
    )
    plan = build_plan(load_spec(spec))
    assert plan.jobs["eval:answer-only"].deps == ["train:trained"] and plan.jobs["train:trained"].state == "not started"
    result = run_experiment(spec, jobs=2)
    assert result.ran[0] == "train:trained" and set(result.ran[1:]) == {"eval:stack-trained", "eval:answer-only"}
    out = tmp_path / "exp"
    trained = yaml.safe_load((out / "train" / "trained" / "stack.yaml").read_text())
    assert [s["adapter"] for s in trained["stages"]] == ["adapters/intent", "adapters/answer"]
    variant = yaml.safe_load((out / "stacks" / "answer-only.yaml").read_text())
    assert variant["stages"][0]["adapter"] == "../train/trained/adapters/answer"
    marker = json.loads((out / "train" / "trained.done.json").read_text())
    assert set(marker["report"]["stages"]) == {"intent", "answer"}
    summary = json.loads((out / "runs" / "stack-trained" / "summary.json").read_text())
    assert summary["adapters_enabled"] and set(summary["adapters"]) == {"intent", "answer"}
    assert run_experiment(spec).ran == []  # trained and evaluated: nothing to redo

    edited = yaml.safe_load(spec.read_text())
    edited["training"]["trained"]["finetune"]["options"]["epochs"] = 3
    spec.write_text(yaml.safe_dump(edited))
    assert build_plan(load_spec(spec)).jobs["train:trained"].state == "partial"  # an edited step is not done


def test_a_distill_step_feeds_finetune_and_a_failed_step_blocks_the_systems(tiny_model_dir, tiny_data, tmp_path):
    """The distill step runs (a tiny random teacher); the finetune step after it fails on a stage the stack does not
    have; the system built on it is not run, the others are."""
    from fslm.experiment.train import train_payload

    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(stack_dict(tiny_model_dir)))
    alpaca = [{"instruction": f"Add {i} and {i}.", "output": f"{2 * i}"} for i in range(4)]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    spec = write_spec(
        tmp_path,
        {
            "name": "chain",
            "evaluation": {"tasks": ["arc_easy"]},
            "training": {
                "distilled": {
                    "distill": {
                        "stack": "stack.yaml",
                        "data": "alpaca.json",
                        "teacher": str(tiny_model_dir),
                        "batch_size": 4,
                    }
                },
                "trained": {
                    "finetune": {"stack": "stack.yaml", "data": "distilled", "stages": ["nope"], "options": FAST}
                },
            },
            "systems": {"base": {"model": str(tiny_model_dir)}, "stack-trained": {"stack": "trained"}},
        },
    )
    loaded = load_spec(spec)
    assert build_plan(loaded).jobs["train:trained"].deps == ["train:distilled"]
    out = tmp_path / "exp"
    assert train_payload(loaded, "trained")["args"]["data"] == str(out / "train" / "distilled" / "distilled.jsonl")
    with pytest.raises(ExperimentError) as err:
        run_experiment(spec)
    result = err.value.result
    assert set(result.failed) == {"train:trained", "eval:stack-trained"}
    assert "unknown stage(s) ['nope']" in result.failed["train:trained"]
    assert result.failed["eval:stack-trained"] == "not run: train:trained failed"
    rows = (out / "train" / "distilled" / "distilled.jsonl").read_text().splitlines()
    assert len(rows) == 4 and result.plan.jobs["train:distilled"].state == "done"
    assert result.plan.jobs["eval:base"].state == "done"
    marker = json.loads((out / "train" / "distilled.done.json").read_text())
    assert marker["report"]["written"] == 4
    assert run_experiment(spec, status=True).plan.jobs["train:distilled"].state == "done"


def test_choice_kd_steps_train_an_option_scorer_with_and_without_a_teacher(tiny_model_dir, tmp_path):
    """The teacher's run and the hard-label baseline on the same questions, each evaluated as raw-adapter scorers."""
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump({**stack_dict(tiny_model_dir), "max_prompt_tokens": 1024}))
    step = {"stack": "stack.yaml", "stage": "answer", "tasks": ["arc_challenge"], "questions": 4}
    spec = write_spec(
        tmp_path,
        {
            "name": "kd",
            "evaluation": {"tasks": ["arc_challenge"], "limit": 2},
            "training": {
                "hard-labels": {"choice_kd": {**step, "options": FAST}},
                "teacher": {"choice_kd": {**step, "options": {**FAST, "kd": str(tiny_model_dir), "kd_mix": 1.0}}},
            },
            "systems": {
                "hard": {"stack": "hard-labels", "answer_format": "raw-adapter"},
                "soft": {"stack": "teacher", "answer_format": "raw-adapter"},
            },
            "comparisons": [["soft", "hard"]],
        },
    )
    run_experiment(spec, jobs=1, isolate=False)
    out = tmp_path / "exp"
    hard = json.loads((out / "train" / "hard-labels.done.json").read_text())["report"]
    soft = json.loads((out / "train" / "teacher.done.json").read_text())["report"]
    assert hard["records"] == soft["records"] == 4
    assert "final_kd" not in hard["stages"]["answer"] and soft["stages"]["answer"]["final_kd"] >= 0
    assert not (out / "train" / "hard-labels" / "kd_teacher_scores.jsonl").exists()
    assert len((out / "train" / "teacher" / "kd_teacher_scores.jsonl").read_text().splitlines()) == 4
    for name in ("hard", "soft"):
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        assert summary["adapters_enabled"] and summary["answer_format"] == "raw-adapter" and summary["n_items"] == 2


def test_a_choice_kd_step_reuses_another_steps_teacher_scores(tiny_model_dir, tmp_path):
    """Two mixes of one teacher ask it once: the second step starts from the first one's scores, after it."""
    from fslm.experiment import train
    from fslm.finetune.choice_kd import SCORES_FILE

    assert train.SCORES_FILE == SCORES_FILE
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump({**stack_dict(tiny_model_dir), "max_prompt_tokens": 1024}))
    step = {"stack": "stack.yaml", "stage": "answer", "tasks": ["arc_challenge"], "questions": 3}
    teacher = {**FAST, "kd": str(tiny_model_dir)}
    body = {
        "name": "kd",
        "evaluation": {"tasks": ["arc_challenge"], "limit": 1},
        "training": {"first": {"choice_kd": {**step, "options": teacher}}},
        "systems": {"s": {"stack": "first", "answer_format": "raw-adapter"}},
    }
    run_experiment(write_spec(tmp_path, body), jobs=1, isolate=False)
    out = tmp_path / "exp" / "train"
    first = out / "first" / SCORES_FILE
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    marked = [{**line, "logprobs": [-7.0 - i for i in range(len(line["logprobs"]))]} for line in lines]
    first.write_text("".join(json.dumps(line) + "\n" for line in marked))  # scores no model would give
    second = {**step, "options": {**teacher, "kd_mix": 1.0}, "teacher_scores": "first"}
    body["training"] = {"second": {"choice_kd": second}, **body["training"]}
    body["systems"] = {"s": {"stack": "second", "answer_format": "raw-adapter"}}
    spec = write_spec(tmp_path, body)
    assert build_plan(load_spec(spec)).jobs["train:second"].deps == ["train:first"]
    run_experiment(spec, jobs=1, isolate=False)
    reused = [json.loads(line) for line in (out / "second" / SCORES_FILE).read_text().splitlines()]
    assert reused == marked  # read, not rescored
