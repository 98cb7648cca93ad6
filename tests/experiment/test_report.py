"""RESULTS.md's text-metric tables, from synthetic rows written as two run folders (values checked by hand)."""

from __future__ import annotations

import pytest

from fslm.evaluate.compare import compare_metrics
from fslm.evaluate.report import build_summary, write_outputs
from fslm.experiment.report import _free_text_note, results_markdown


class _Described:
    """What build_summary reads of a system: its name and description."""

    def __init__(self, name: str):
        self.name = name

    def describe(self) -> dict:
        return {"kind": "model", "model": self.name, "params_touched": 1}


def _run(folder, name: str, rouge: list[float]) -> dict:
    ids = [f"alpaca/r{i}" for i in range(len(rouge))]
    rows = [
        {"id": i, "task": "alpaca", "acc": 0.0, "acc_norm": None, "tokens_in": 5, "tokens_out": 3, "seconds": 0.1}
        for i in ids
    ]
    metrics = {"alpaca": {"rougeL": rouge, "em": [0.0] * len(rouge)}}
    summary = build_summary(_Described(name), {"alpaca": ids}, rows, [], metrics=metrics)
    folder.mkdir()
    write_outputs(folder, summary, rows, metrics)
    return summary


def test_metric_means_cis_and_paired_differences_are_reported(tmp_path):
    a = _run(tmp_path / "a", "curated", [0.5, 0.7, 0.9])
    b = _run(tmp_path / "b", "random", [0.25, 0.45, 0.65])  # every item exactly 0.25 below A
    diffs = compare_metrics(tmp_path / "a", tmp_path / "b", ["rougeL", "em"])
    rouge = diffs["alpaca"]["rougeL"]
    assert rouge["n"] == 3 and rouge["p_le_0"] == 0.0
    assert rouge["diff"] == pytest.approx(0.25) and rouge["ci95"] == pytest.approx([0.25, 0.25])
    assert diffs["alpaca"]["em"]["diff"] == 0.0
    b_rouge = b["tasks"]["alpaca"]["metrics"]["rougeL"]
    assert b_rouge["mean"] == pytest.approx(0.45) and 0.25 <= b_rouge["ci95"][0] <= 0.45 <= b_rouge["ci95"][1] <= 0.65

    def entry(summary):
        return {
            "label": summary["system"],
            "macro_acc": 0.0,
            "tasks": summary["tasks"],
            "metrics": {"alpaca": summary["tasks"]["alpaca"]["metrics"]},
        }

    results = {
        "name": "x",
        "description": "",
        "evaluation": {"tasks": ["alpaca"], "split": "test", "limit": 3, "num_fewshot": 0, "gen_max_tokens": 8},
        "items_per_system": 3,
        "systems": {"curated": entry(a), "random": entry(b)},
        "comparisons": [],
        "selection": None,
        "traces": [],
    }
    for e in results["systems"].values():
        e.update(macro_ci95=[0.0, 0.0], seconds_per_item=0.1, tokens_in_per_item=5, generated_tokens_per_item=3)
        e.update(params_touched=1)
    macro = {"n": 3, "a": 0.0, "b": 0.0, "diff": 0.0, "ci95": [0.0, 0.0], "p_le_0": 1.0}
    results["comparisons"] = [
        {"a": "curated", "b": "random", "state": "done", "tasks": {"alpaca": macro, "macro": macro}, "metrics": diffs}
    ]
    text = results_markdown(results, pareto=False)
    lo, hi = (f"{100 * x:.1f}" for x in a["tasks"]["alpaca"]["metrics"]["rougeL"]["ci95"])
    assert f"| curated | alpaca | rougeL | 3 | 70.0 | {lo}–{hi} |" in text
    assert "| random | alpaca | em | 3 | 0.0 | 0.0–0.0 |" in text
    assert "Accuracy on alpaca is the exact match of a whole free-form answer" in text
    assert _free_text_note(["arc_easy", "gsm8k"]) == []  # an exact answer (a letter, a number) is a fair accuracy
    assert "| curated | random | alpaca | rougeL | 3 | 70.0 | 45.0 | **+25.0** | +25.0 to +25.0 | 0.000 |" in text
    assert "| curated | random | **+0.0** | +0.0 to +0.0 | 1.000 | +0.0 |" in text  # the accuracy table is kept
