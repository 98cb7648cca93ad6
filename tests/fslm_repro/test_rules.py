"""The recipe's decision rules on hand-made inputs: teacher choice, CI wording, example-trace picking."""

from __future__ import annotations

import json

import pytest


def row(name, kept_rate, gain, hours):
    return {"teacher": name, "kept_rate": kept_rate, "gold_gain_nats_per_token": gain, "projected_distill_hours": hours}


def test_teacher_rule_prefers_kept_rate_then_gain_and_respects_the_budget():
    from teachers_step import choose

    rows = [
        row("big", 0.80, 0.10, 9.0),
        row("mid", 0.70, 0.05, 3.0),
        row("small", 0.65, 0.20, 1.0),
        row("tiny", 0.30, 0.9, 0.2),
    ]
    chosen, reason = choose(rows, budget_hours=8.0)  # big is over budget; mid and small tie within 10 points
    assert chosen["teacher"] == "small" and "small" in reason
    assert choose(rows, budget_hours=20.0)[0]["teacher"] == "big"  # within 10 points of 0.80: only big itself
    assert choose(rows, budget_hours=0.1)[0]["teacher"] == "tiny"  # all over budget: the fastest, and said so
    assert "fastest" in choose(rows, budget_hours=0.1)[1]
    assert choose([row("a", 0.5, None, 1.0), row("b", 0.5, None, 0.5)], 8.0)[0]["teacher"] == "b"  # no gain: faster


def test_teacher_rule_ignores_unavailable_candidates():
    from teachers_step import choose

    from fslm.errors import ConfigError

    assert choose([{"teacher": "gone", "error": "not installed"}, row("ok", 0.1, None, 1.0)], 8.0)[0]["teacher"] == "ok"
    with pytest.raises(ConfigError, match="no teacher candidate"):
        choose([{"teacher": "gone", "error": "not installed"}], 8.0)


@pytest.mark.parametrize(
    ("ci", "word"),
    [
        ((0.01, 0.05), "better"),
        ((-0.05, -0.01), "worse"),
        ((-0.02, 0.03), "includes zero"),
        ((-0.05, -1e-17), "includes zero"),
    ],
)
def test_verdict_wording_follows_the_interval(ci, word):
    from report import verdict

    text = verdict({"diff": sum(ci) / 2, "ci95": list(ci), "n": 100}, "A", "B")
    assert word in text
    assert ("excludes zero" in text) == (word != "includes zero")


def test_a_verdict_that_excludes_zero_says_whether_one_task_carries_it():
    from report import verdict

    def entry(diff, lo, hi):
        return {"diff": diff, "ci95": [lo, hi], "n": 100}

    rests = {**entry(0.03, 0.01, 0.05), "without": {"boolq": entry(0.01, -0.01, 0.03), "piqa": entry(0.04, 0.02, 0.06)}}
    assert verdict(rests, "A", "B").endswith(
        "It rests on one task: without boolq, +1.0 pts (CI -1.0 to +3.0), the CI includes zero."
    )
    holds = {
        **entry(-0.03, -0.05, -0.01),
        "without": {"boolq": entry(-0.02, -0.04, -0.005), "piqa": entry(-0.04, -0.06, -0.02)},
    }
    assert verdict(holds, "A", "B").endswith(
        "It holds with any one task left out (weakest: without boolq, -2.0 pts (CI -4.0 to -0.5))."
    )
    unsure = {**entry(0.01, -0.01, 0.03), "without": rests["without"]}
    assert verdict(unsure, "A", "B").endswith("the CI includes zero.") and "task" not in verdict(unsure, "A", "B")


def test_examples_are_picked_by_rule():
    from report import pick_examples

    def r(task, i, scores, gold, correct):
        return {
            "task": task,
            "id": str(i),
            "choice_scores": scores,
            "gold": gold,
            "correct": correct,
            "prediction": scores.index(max(scores)),
        }

    stack = {
        ("t", "1"): r("t", 1, [0, -5], 0, True),
        ("t", "2"): r("t", 2, [0, -1], 0, True),
        ("t", "3"): r("t", 3, [-9, 0], 0, False),
        ("t", "4"): r("t", 4, [-2, 0], 0, False),
        ("t", "5"): r("t", 5, [0, -3], 0, True),
    }
    base = {
        ("t", "1"): r("t", 1, [-1, 0], 0, False),
        ("t", "2"): r("t", 2, [-1, 0], 0, False),
        ("t", "3"): r("t", 3, [0, -1], 0, True),
        ("t", "4"): r("t", 4, [0, -1], 0, True),
        ("t", "5"): r("t", 5, [0, -1], 0, True),
    }
    (_, _, beat, _), (_, _, wrong, _), (_, _, good, _) = pick_examples(stack, base)
    assert beat["id"] == "1" and wrong["id"] == "3" and good["id"] == "5"
    assert [ex[2] for ex in pick_examples({}, {})] == [None, None, None]


def test_widest_task_is_the_one_with_the_largest_spread():
    from report import widest_task

    summaries = {
        "a": {"tasks": {"x": {"acc": 0.5}, "y": {"acc": 0.2}}},
        "b": {"tasks": {"x": {"acc": 0.6}, "y": {"acc": 0.9}}},
    }
    assert widest_task(summaries, ["x", "y"]) == "y"
    summaries["b"]["tasks"]["y"]["acc"] = 0.25
    assert widest_task(summaries, ["x", "y"]) == "x"


def test_anchoring_counts_items_whose_earlier_texts_name_one_option():
    from report import anchoring

    def row(said: str, prediction: int, gold: int = 0) -> dict:
        return {
            "choices": ["photosynthesis", "respiration", "no"],
            "prediction": prediction,
            "gold": gold,
            "correct": prediction == gold,
            "stages": {"facts": said, "reasoning": "", "answer": "ignored: photosynthesis"},
        }

    rows = {
        1: row("It is respiration.", 1),  # named one (wrong) option and followed it
        2: row("Photosynthesis makes sugar.", 0),  # named the gold option and followed it
        3: row("Photosynthesis or respiration?", 0),  # two options named: counted elsewhere
        4: row("Plants need light.", 1),  # none named ("no" is too short to count)
        5: {
            "choices": [],
            "prediction": None,
            "gold": "4",
            "correct": False,
            "stages": {"facts": "4"},
        },  # generation: skipped
        # a multiple-choice row has no answer-stage text: its LAST early stage (reasoning) counts too
        6: {
            "choices": ["photosynthesis", "respiration", "no"],
            "prediction": 0,
            "gold": 1,
            "correct": False,
            "stages": {"facts": "Plants.", "reasoning": "So it is photosynthesis."},
        },
    }
    a = anchoring(rows)
    assert a == {"items": 5, "named": 3, "followed": 3, "named_is_gold": 1, "acc_named": 1 / 3, "acc_other": 0.5}
    assert anchoring({}) is None


def test_the_control_pairs_the_base_models_picks_with_the_stacks_texts():
    from report import anchoring, unseen_texts

    choices = ["photosynthesis", "respiration"]
    base = {
        1: {"choices": choices, "prediction": 0, "gold": 1, "correct": False, "stages": {}},
        2: {"choices": choices, "prediction": 1, "gold": 1, "correct": True, "stages": {}},
    }
    stack = {1: {"stages": {"facts": "It is photosynthesis."}}, 2: {"stages": {"facts": "It is photosynthesis."}}}
    control = unseen_texts(base, stack)
    assert [r["prediction"] for r in control.values()] == [0, 1] and control[1]["stages"] == stack[1]["stages"]
    assert anchoring(control) == {
        "items": 2,
        "named": 2,
        "followed": 1,
        "named_is_gold": 0,
        "acc_named": 0.5,
        "acc_other": None,
    }


def test_two_recipe_processes_keep_each_others_step_times(tmp_path):
    """`--only eval` and `--only select` may run side by side on one out dir: neither overwrites the other's entry."""
    from recipe import Recipe, StepLog

    recipe = Recipe.for_scale("smoke", tmp_path / "out", tmp_path / "work")
    recipe.out.mkdir(parents=True)
    a, b = StepLog(recipe), StepLog(recipe)  # both read steps.json before either writes
    sa, sb = a.start("eval"), b.start("select")
    b.finish("select", sb, "done")
    a.finish("eval", sa, "failed", "KeyboardInterrupt")
    steps = json.loads((recipe.out / "steps.json").read_text())["steps"]
    assert steps["select"]["status"] == "done" and steps["eval"]["status"] == "failed"
    assert (
        steps["select"]["sessions"][0]["status"] == "done"
        and steps["eval"]["sessions"][0]["note"] == "KeyboardInterrupt"
    )


def test_sum_rule_adds_the_two_scores_and_keeps_generation_results():
    from diagnostics import macro_of, sum_rule

    def row(task, i, scores, gold, acc, **extra):
        return (task, str(i)), {
            "task": task,
            "id": str(i),
            "choices": [f"c{j}" for j in range(len(scores or []))],
            "choice_scores": scores,
            "choice_chars": [2] * len(scores or []),
            "gold": gold,
            "acc": acc,
            **extra,
        }

    texts = dict(
        [
            row("arc", 0, [-1.0, -3.0], 1, 0.0),  # texts lean to the wrong option a little...
            row("arc", 1, [-1.0, -9.0], 0, 1.0),
            row("gsm8k", 2, None, "4", 1.0),
        ]
    )
    plain = dict(
        [
            row("arc", 0, [-6.0, -1.0], 1, 1.0),  # ...the plain reading is sure of the right one: the sum is right
            row("arc", 1, [-2.0, -1.0], 0, 0.0),  # a strong texts vote survives a weak plain one
            row("gsm8k", 2, None, "4", 0.0),
        ]
    )
    rule = sum_rule(texts, plain)
    assert rule["tasks"] == {"arc": 1.0, "gsm8k": 1.0} and rule["macro"] == 1.0 and rule["n"] == 3
    assert macro_of(texts, list(texts)) == (0.5 + 1.0) / 2
    mc2 = dict([row("truthfulqa_mc2", 0, [0.0, 0.0, -50.0], 0, 0.5, gold_set=[0, 1])])
    assert abs(sum_rule(mc2, mc2)["macro"] - 1.0) < 1e-9  # mc2: probability mass on the true answers
    assert sum_rule(texts, {}) is None


def test_a_measurement_beside_other_work_is_flagged():
    from teachers_step import busy_while_measured

    assert busy_while_measured({"loadavg": [2.9, 3.1], "threads": 2})
    assert not busy_while_measured({"loadavg": [1.7, 1.9], "threads": 2})
    assert not busy_while_measured({"teacher": "old row without loads"})
