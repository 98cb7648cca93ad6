"""Bootstrap statistics on inputs whose answers are known."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fslm.evaluate.stats import bootstrap_ci, gap_recovered, macro_bootstrap_ci, paired_bootstrap


def test_constant_scores_have_a_zero_width_interval():
    assert bootstrap_ci([1.0] * 50) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 50) == (0.0, 0.0)


def test_half_correct_interval_matches_the_normal_approximation():
    values = [1.0, 0.0] * 100  # n = 200, p = 0.5: normal 95% half-width = 1.96 * sqrt(.25 / 200) = 0.0693
    lo, hi = bootstrap_ci(values)
    assert lo < 0.5 < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 200), abs=0.01)


def test_intervals_are_deterministic_and_seeded():
    values = list(np.random.default_rng(3).integers(0, 2, size=77).astype(float))
    assert bootstrap_ci(values) == bootstrap_ci(values)
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=2)


def test_empty_input_gives_nan():
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)


def test_macro_interval_brackets_the_mean_of_task_means():
    per_task = {"a": [1.0] * 30, "b": [0.0, 1.0] * 20}
    lo, hi = macro_bootstrap_ci(per_task)
    assert lo < (1.0 + 0.5) / 2 < hi
    assert lo >= 0.5 and hi <= 1.0  # task a contributes exactly 1.0 to every replicate


def test_paired_bootstrap_identical_runs_differ_by_zero():
    runs = {"t": [1.0, 0.0, 1.0, 1.0, 0.0] * 10}
    out = paired_bootstrap(runs, runs)
    assert out["t"]["diff"] == 0.0 and out["t"]["ci95"] == [0.0, 0.0]
    assert out["macro"]["diff"] == 0.0


def test_paired_bootstrap_known_difference_and_pairing():
    a = {"t": [1.0] * 40, "u": [1.0, 0.0] * 20}
    b = {"t": [0.0] * 40, "u": [1.0, 0.0] * 20}
    out = paired_bootstrap(a, b)
    assert out["t"]["diff"] == 1.0 and out["t"]["ci95"] == [1.0, 1.0] and out["t"]["p_le_0"] == 0.0
    # u: same per-item outcomes -> the PAIRED interval is exactly 0 (an unpaired one would be about +-0.2)
    assert out["u"]["ci95"] == [0.0, 0.0]
    assert out["macro"]["diff"] == pytest.approx(0.5) and out["macro"]["ci95"] == [0.5, 0.5]
    assert out["macro"]["n"] == 80


def test_leaving_out_the_one_task_that_carries_a_macro_difference_removes_it():
    rng = np.random.default_rng(1)
    same = {t: rng.integers(0, 2, 200).astype(float).tolist() for t in ("t1", "t2", "t3")}
    a = {**same, "big": [1.0] * 150 + [0.0] * 50}
    b = {
        **{t: [1.0 - x if i % 10 == 0 else x for i, x in enumerate(v)] for t, v in same.items()},
        "big": [0.0] * 150 + [1.0] * 50,
    }
    out = paired_bootstrap(a, b, leave_one_out=True)
    assert out["macro"]["ci95"][0] > 0  # the whole macro says A is better...
    without = out["macro_without"]
    assert set(without) == set(a)
    assert without["big"]["ci95"][0] < 0 < without["big"]["ci95"][1]  # ...only because of one task
    for task, entry in without.items():
        others = [t for t in a if t != task]
        assert entry["diff"] == pytest.approx(np.mean([out[t]["diff"] for t in others]))
        assert entry["n"] == sum(out[t]["n"] for t in others)
    assert without["t1"]["ci95"][0] > 0
    assert "macro_without" not in paired_bootstrap(a, b) and "macro_without" not in paired_bootstrap(
        {"x": [1.0], "y": [0.0]}, {"x": [0.0], "y": [1.0]}, leave_one_out=True
    )  # two tasks: nothing to learn


def test_paired_bootstrap_rejects_misaligned_runs():
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap({"t": [1.0, 0.0]}, {"t": [1.0]})


def _fake_run(folder, kind, accs, fewshot=0):
    import json

    folder.mkdir()
    (folder / "items.jsonl").write_text(
        "".join(json.dumps({"task": "boolq", "id": str(i), "acc": a}) + "\n" for i, a in enumerate(accs))
    )
    (folder / "summary.json").write_text(json.dumps({"system": f"{kind}:x", "kind": kind, "num_fewshot": fewshot}))
    return folder


def test_compare_warns_when_the_two_runs_use_different_prompt_formats(tmp_path):
    from fslm.evaluate import compare

    stack = _fake_run(tmp_path / "stack", "stack", [1, 1, 0, 1])
    model = _fake_run(tmp_path / "model", "model", [0, 0, 0, 1], fewshot=5)
    other_stack = _fake_run(tmp_path / "stack2", "stack", [1, 0, 0, 1])
    result = compare(stack, model, out_dir=tmp_path / "cmp", n_boot=200)
    assert (
        len(result["notes"]) == 2
        and "mixes the prompt format" in result["notes"][0]
        and "0-shot, B is 5-shot" in result["notes"][1]
    )
    assert "**Note:** A is asked with the stack's chat prompt" in (tmp_path / "cmp" / "compare.md").read_text()
    assert compare(stack, other_stack, n_boot=200)["notes"] == []
    raw_stack = _fake_run(tmp_path / "raw", "stack", [1, 0, 1, 1])
    summary = raw_stack / "summary.json"
    summary.write_text(
        summary.read_text().replace('"kind": "stack"', '"kind": "stack", "answer_format": "raw-adapter"')
    )
    assert (
        compare(raw_stack, _fake_run(tmp_path / "model0", "model", [0, 0, 0, 1]), n_boot=200)["notes"] == []
    )  # both raw
    assert "mixes the prompt format" in compare(raw_stack, stack, n_boot=200)["notes"][0]
    scorer = _fake_run(tmp_path / "scorer", "stack", [1, 0, 1, 1])  # a raw `score` stage answers options
    summary = scorer / "summary.json"
    summary.write_text(
        summary.read_text().replace(
            '"kind": "stack"', '"kind": "stack", "answer_format": "stack", "choice_format": "raw"'
        )
    )
    assert compare(scorer, _fake_run(tmp_path / "model1", "model", [0, 0, 0, 1]), n_boot=200)["notes"] == []
    assert "mixes the prompt format" in compare(scorer, stack, n_boot=200)["notes"][0]


def test_compare_reports_the_macro_with_each_task_left_out(tmp_path):
    import json

    from fslm.evaluate import compare

    def run(name, accs):
        folder = tmp_path / name
        folder.mkdir()
        rows = [
            {"task": task, "id": str(i), "acc": acc} for task, values in accs.items() for i, acc in enumerate(values)
        ]
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    a = run("a", {"boolq": [1] * 30, "piqa": [1, 0] * 15, "arc_easy": [0, 1] * 15})
    b = run("b", {"boolq": [0] * 30, "piqa": [1, 0] * 15, "arc_easy": [0, 1] * 15})
    result = compare(a, b, out_dir=tmp_path / "cmp", n_boot=200)
    assert (result["a"]["run"], result["b"]["run"]) == ("../a", "../b")  # relative to compare.json: no machine's paths
    assert set(result["tasks"]) == {"boolq", "piqa", "arc_easy", "macro"}  # per-task entries stay as they were
    assert result["macro_without"]["boolq"]["diff"] == 0.0 and result["macro_without"]["piqa"]["diff"] == pytest.approx(
        0.5
    )
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["macro_without"]["boolq"]["ci95"] == [0.0, 0.0]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Macro with one task left out" in md and "| boolq | 50.0 | 50.0 | +0.0 | +0.0 to +0.0 |" in md


def test_gap_recovered_on_a_small_example_computed_by_hand():
    weak = {"t": [1, 0, 0, 0], "u": [0, 0]}
    strong = {"t": [1, 1, 0, 0], "u": [1, 1]}
    ceiling = {"t": [1, 1, 1, 0], "u": [1, 1]}
    out = gap_recovered(weak, strong, ceiling, n_boot=300)
    t = out["t"]
    assert (t["n"], t["weak"], t["strong"], t["ceiling"]) == (4, 0.25, 0.5, 0.75)
    assert t["gap"] == 0.5 and t["pgr"] == 0.5  # (0.50 - 0.25) / (0.75 - 0.25)
    assert out["u"]["pgr"] == 1.0 and out["u"]["gap_ci95"] == [1.0, 1.0] and out["u"]["defined"]
    m = out["macro"]
    # macro accuracies 0.125, 0.75, 0.875: the ratio of macros, not the mean of the task ratios (0.75)
    assert m["n"] == 6 and m["gap"] == 0.75 and m["pgr"] == pytest.approx(0.625 / 0.75)
    lo, hi = m["pgr_ci95"]
    assert lo <= m["pgr"] <= hi and m["gap_ci95"][0] <= 0.75 <= m["gap_ci95"][1]


def test_gap_recovered_resamples_items_jointly_with_the_usual_seed():
    # weak always wrong, ceiling always right: the gap is 1 in every replicate, so PGR's replicates are exactly the
    # bootstrap means of the strong run, drawn with the same indices as bootstrap_ci's
    strong = list(np.random.default_rng(5).integers(0, 2, size=60).astype(float))
    out = gap_recovered({"t": [0.0] * 60}, {"t": strong}, {"t": [1.0] * 60}, seed=7)
    assert out["t"]["gap_ci95"] == [1.0, 1.0] and out["t"]["gap_positive"] == 1.0
    assert out["t"]["pgr"] == pytest.approx(np.mean(strong))
    assert out["t"]["pgr_ci95"] == pytest.approx(list(bootstrap_ci(strong, seed=7)))
    assert gap_recovered({"t": [0.0] * 60}, {"t": strong}, {"t": [1.0] * 60}, seed=7) == out


def test_gap_recovered_without_a_gap_gives_no_ratio():
    same = [1.0, 0.0, 1.0, 0.0, 0.0]
    entry = gap_recovered({"t": same}, {"t": [1.0] * 5}, {"t": same}, n_boot=200)["t"]
    assert entry["gap"] == 0.0 and entry["gap_ci95"] == [0.0, 0.0]
    assert entry["pgr"] is None and entry["pgr_ci95"] is None and entry["gap_positive"] == 0.0
    assert not entry["defined"]
    # a small positive gap whose interval reaches 0: a ratio exists but is flagged, and only some replicates count
    small = gap_recovered({"t": [0.0] * 20}, {"t": [0.0] * 20}, {"t": [1.0] + [0.0] * 19}, n_boot=500)["t"]
    assert small["gap"] == pytest.approx(0.05) and small["gap_ci95"][0] == 0.0 and not small["defined"]
    assert small["pgr"] == 0.0 and 0.0 < small["gap_positive"] < 1.0 and small["pgr_ci95"] == [0.0, 0.0]


def test_gap_recovered_rejects_misaligned_runs():
    with pytest.raises(ValueError, match="align"):
        gap_recovered({"t": [1.0, 0.0]}, {"t": [1.0]}, {"t": [1.0, 1.0]})
    with pytest.raises(ValueError, match="same tasks"):
        gap_recovered({"t": [1.0], "u": [0.0]}, {"t": [1.0]}, {"t": [1.0], "u": [1.0]})


_runs = st.integers(1, 12).flatmap(
    lambda n: st.tuples(*[st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n) for _ in range(4)])
)


@settings(max_examples=40, deadline=None)
@given(_runs)
def test_gap_recovered_is_0_at_the_weak_run_and_1_at_the_ceiling(runs):
    w1, c1, w2, c2 = runs
    weak, ceiling = {"t": w1, "u": w2}, {"t": c1, "u": c2}
    at_weak = gap_recovered(weak, weak, ceiling, n_boot=100)
    at_ceiling = gap_recovered(weak, ceiling, ceiling, n_boot=100)
    for key in ("t", "u", "macro"):
        low, high = at_weak[key], at_ceiling[key]
        assert low["gap"] == high["gap"] and low["gap_ci95"] == high["gap_ci95"]
        if low["gap"] > 0:
            assert low["pgr"] == 0.0 and high["pgr"] == 1.0
        else:
            assert low["pgr"] is None and high["pgr"] is None
        if low["pgr_ci95"] is not None:
            assert low["pgr_ci95"] == [0.0, 0.0] and high["pgr_ci95"] == pytest.approx([1.0, 1.0])
        assert low["defined"] == (low["gap"] > 0 and low["gap_ci95"][0] > 0)
