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
    results["systems"]["curated"]["cpu_seconds_per_item"] = 0.2  # "random" was run before CPU time was recorded
    macro = {"n": 3, "a": 0.0, "b": 0.0, "diff": 0.0, "ci95": [0.0, 0.0], "p_le_0": 1.0}
    results["comparisons"] = [
        {"a": "curated", "b": "random", "state": "done", "tasks": {"alpaca": macro, "macro": macro}, "metrics": diffs}
    ]
    text = results_markdown(results, pareto=False)
    lo, hi = (f"{100 * x:.1f}" for x in a["tasks"]["alpaca"]["metrics"]["rougeL"]["ci95"])
    assert f"| curated | alpaca | rougeL | 3 | 70.0 | {lo}–{hi} |" in text
    assert "| random | alpaca | em | 3 | 0.0 | 0.0–0.0 |" in text
    assert "| s/item | CPU s/item | tokens in/item |" in text
    assert "| 0.1 | 0.2 | 5 | 3 | 1 |" in text and "| 0.1 |  | 5 | 3 | 1 |" in text
    assert "Accuracy on alpaca is the exact match of a whole free-form answer" in text
    assert _free_text_note(["arc_easy", "gsm8k"]) == []  # an exact answer (a letter, a number) is a fair accuracy
    assert "| curated | random | alpaca | rougeL | 3 | 70.0 | 45.0 | **+25.0** | +25.0 to +25.0 | 0.000 |" in text
    assert "| curated | random | **+0.0** | +0.0 to +0.0 | 1.000 | +0.0 |" in text  # the accuracy table is kept


def _items(folder, accs: dict[str, list[float]]):
    import json

    folder.mkdir(parents=True)
    rows = [
        {"task": task, "id": f"{task}/{i}", "acc": a} for task, values in accs.items() for i, a in enumerate(values)
    ]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_performance_gap_recovered_section_from_three_runs(tmp_path):
    """Fake run folders (items.jsonl only, no model): per-task and macro PGR as computed by hand, an undefined ratio
    where the gap's interval reaches 0, a row for runs not done, and the result cached beside the comparisons."""
    import json

    from fslm.experiment import parse_spec
    from fslm.experiment.plan import DONE, EVAL, TODO, Job, Plan
    from fslm.experiment.results import gather

    systems = {n: {"model": "m"} for n in ("weak", "w2s", "w2s-conf", "ceiling", "flat")}
    gaps = [
        {"weak": "weak", "strong": "w2s", "ceiling": "ceiling"},
        {"weak": "weak", "strong": "w2s", "ceiling": "flat"},  # no gap: ceiling no better than weak
        {"weak": "weak", "strong": "w2s-conf", "ceiling": "ceiling"},  # w2s-conf not run yet
    ]
    data = {
        "name": "w2s",
        "out": "out",
        "evaluation": {"tasks": ["arc_easy", "openbookqa"]},
        "systems": systems,
        "report": {"pareto": False, "gap_recovered": gaps},
    }
    spec = parse_spec(data, "w2s.yaml", tmp_path / "w2s.yaml")
    n = 20  # per task: weak 5/20, w2s 11/20, ceiling 17/20 on arc_easy; 4/20, 4/20, 14/20 on openbookqa
    accs = {
        "weak": {"arc_easy": [1.0] * 5 + [0.0] * 15, "openbookqa": [1.0] * 4 + [0.0] * 16},
        "w2s": {"arc_easy": [1.0] * 11 + [0.0] * 9, "openbookqa": [1.0] * 4 + [0.0] * 16},
        "ceiling": {"arc_easy": [1.0] * 17 + [0.0] * 3, "openbookqa": [1.0] * 14 + [0.0] * 6},
        "flat": {"arc_easy": [0.0] * 15 + [1.0] * 5, "openbookqa": [0.0] * 16 + [1.0] * 4},
    }
    jobs = {}
    for name in systems:
        folder = spec.out_dir / "runs" / name
        if name in accs:
            _items(folder, accs[name])
        jobs[f"eval:{name}"] = Job(EVAL, name, folder, state=DONE if name in accs else TODO, total=2 * n)
    ids = {t: [f"{t}/{i}" for i in range(n)] for t in ("arc_easy", "openbookqa")}
    plan = Plan(spec, jobs, {(None, None): ids})

    results = gather(spec, plan)
    done, flat, waiting = results["gap_recovered"]
    arc, obqa, macro = (done["tasks"][k] for k in ("arc_easy", "openbookqa", "macro"))
    assert arc["pgr"] == pytest.approx(6 / 12) and obqa["pgr"] == 0.0 and arc["defined"] and obqa["defined"]
    # macro accuracies: weak 0.225, w2s 0.375, ceiling 0.775 -> 0.15 / 0.55 (not the mean of 0.5 and 0)
    assert macro["pgr"] == pytest.approx(0.15 / 0.55) and macro["gap"] == pytest.approx(0.55) and macro["n"] == 40
    assert macro["pgr_ci95"][0] < macro["pgr"] < macro["pgr_ci95"][1] and macro["gap_positive"] == 1.0
    assert done["not_shared"] == {"weak": 0, "strong": 0, "ceiling": 0}
    assert flat["tasks"]["macro"]["gap"] == 0.0 and not flat["tasks"]["macro"]["defined"]
    assert waiting["state"] == "not run: w2s-conf"

    text = results_markdown(results, pareto=False)
    assert "## Performance gap recovered" in text
    lo, hi = macro["pgr_ci95"]
    glo, ghi = macro["gap_ci95"]
    assert (
        f"| weak | w2s | ceiling | **0.27** | {lo:.2f} to {hi:.2f} | +55.0 | {100 * glo:+.1f} to {100 * ghi:+.1f} | "
        "100.0% | 0.50 | 0.00 |"
    ) in text
    # the same accuracy on other items: a gap of 0 whose interval spans both signs, so no ratio anywhere
    row = next(line for line in text.splitlines() if line.startswith("| weak | w2s | flat |"))
    assert row.startswith("| weak | w2s | flat | gap CI includes 0: PGR undefined | — | +0.0 | -")
    assert row.endswith("| undef. | undef. |")
    assert "| weak | w2s-conf | ceiling | not run: w2s-conf |" in text

    # cached: the stored result is what the next report reads, until a run's items change
    cached = spec.out_dir / done["folder"] / "gap.json"
    stored = json.loads(cached.read_text())
    stored["tasks"]["macro"]["pgr"] = 0.5
    cached.write_text(json.dumps(stored))
    assert gather(spec, plan)["gap_recovered"][0]["tasks"]["macro"]["pgr"] == 0.5
    (spec.out_dir / "runs" / "w2s" / "items.jsonl").unlink()
    _items(spec.out_dir / "runs" / "w2s-new", accs["ceiling"])
    jobs["eval:w2s"].folder = spec.out_dir / "runs" / "w2s-new"
    assert gather(spec, plan)["gap_recovered"][0]["tasks"]["macro"]["pgr"] == 1.0
