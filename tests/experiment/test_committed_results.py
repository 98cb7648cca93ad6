"""The hand-written ANALYSIS.md beside the committed reproduction results quotes numbers from them: each must be one
the results hold (RESULTS.md's tables, the comparisons, the runs' JSON), not remembered or rounded differently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def generated_numbers(results: Path) -> set[str]:
    """Every macro and per-task accuracy (test and held-out runs), macro and per-task difference (also with one task
    left out), CI bound, held-out macro, the trained stack's s/item ratio to the base model in its full run and every
    system's when timed together, in the committed JSON outputs, as a text quotes them (one decimal; differences also
    without their sign)."""
    values: list[float] = []
    for summary in [*(results / "runs").glob("*/summary.json"), *(results / "select").glob("*/summary.json")]:
        data = json.loads(summary.read_text())
        values += [data["macro_acc"], *(t["acc"] for t in data["tasks"].values())]
    for cmp in (results / "compare").glob("*/compare.json"):
        data = json.loads(cmp.read_text())
        for entry in [*data["tasks"].values(), *data.get("macro_without", {}).values()]:
            values += [entry["diff"], *entry["ci95"], -entry["diff"]]
    if (results / "select.json").is_file():
        values += json.loads((results / "select.json").read_text())["heldout_macro"].values()
    out = {f"{100 * v:.1f}" for v in values} | {f"{100 * v:+.1f}" for v in values}
    cost = {
        p.parent.name: json.loads(p.read_text())["cost"]["seconds_per_item"]
        for p in (results / "runs").glob("*/summary.json")
    }
    if {"stack-trained", "base"} <= cost.keys():
        out.add(f"{cost['stack-trained'] / cost['base']:.1f}")
    for timing in results.glob("timing-*.json"):  # benchmarks/bench_stacks.py: stack over base, timed together
        out.add(f"{json.loads(timing.read_text())['seconds_ratio']:.2f}")
    if (results / "timing.json").is_file():  # each system's seconds over the base model's, timed together
        timed = json.loads((results / "timing.json").read_text())["systems"]
        out |= {f"{row['seconds_per_item'] / timed['base']['seconds_per_item']:.1f}" for row in timed.values()}
    return out


def decimals(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])[+-]?\d+\.\d+(?![\w.])", text)


def analysis_text(results: Path) -> str:
    analysis = results / "ANALYSIS.md"
    return analysis.read_text(encoding="utf-8").rstrip() if analysis.is_file() else ""


def reported_numbers(results: Path) -> set[str]:
    """Every decimal the results generator wrote (RESULTS.md without the hand-written analysis, the per-task comparisons, the
    JSON numbers above), unsigned; a table's two-decimal value also as quoted with one (41.88 as 41.9)."""
    generated = (results / "RESULTS.md").read_text(encoding="utf-8").replace(analysis_text(results), "")
    generated += "".join(p.read_text(encoding="utf-8") for p in (results / "compare").glob("*/compare.md"))
    known = set(decimals(generated)) | generated_numbers(results)
    known |= {f"{float(k):.1f}" for k in known if len(k.split(".")[1]) > 1}
    return {k.lstrip("+-") for k in known}


@pytest.mark.parametrize("folder", ["fslm_repro_pilot", "fslm_repro", "stacks"])
def test_every_decimal_in_the_hand_written_analysis_is_one_the_results_hold(folder: str):
    """ANALYSIS.md is written by a person from the tables; its numbers must be the tables', not remembered or rounded
    differently."""
    results = RESULTS / folder
    text = analysis_text(results)
    if not text:
        pytest.skip(f"no ANALYSIS.md in {results.relative_to(REPO)} yet")
    assert text in (results / "RESULTS.md").read_text(encoding="utf-8"), "RESULTS.md includes ANALYSIS.md verbatim"
    assert len(decimals(text)) >= 10
    known = reported_numbers(results)
    assert [d for d in decimals(text) if d.lstrip("+-") not in known] == []


def test_the_stacks_summary_has_the_agreed_keys_and_is_what_the_results_give():
    """benchmarks/results/stacks/summary.json is read by other tools: exactly these keys, and every value derived from
    the committed run folders and timings by benchmarks/bench_stacks.py (null where nothing is measured yet)."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_stacks import build_summary

    results = RESULTS / "stacks"
    committed = json.loads((results / "summary.json").read_text())
    assert list(committed) == ["default", "best", "escalate", "gsm8k_tool", "generative"]
    assert committed == build_summary(results)
    default = committed["default"]
    assert set(default) == {"macro", "base_macro", "delta_ci95", "seconds_ratio"}
    low, high = default["delta_ci95"]
    assert low <= default["macro"] - default["base_macro"] <= high
