"""The README's FSLM rows and the hand-written ANALYSIS.md quote numbers from the committed results: each must be one
the recipe wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
ROWS = {  # README row prefix -> results folder, fewest decimals the row must quote
    "| FSLM reproduction, pilot scale": ("fslm_repro_pilot", 20),
    "| FSLM reproduction, full scale": ("fslm_repro", 8),
}


def generated_numbers(results: Path) -> set[str]:
    """Every macro and per-task accuracy (test and held-out runs), macro and per-task difference (also with one task
    left out), CI bound, held-out macro, the trained stack's s/item ratio to the base model in its full run and every
    system's when timed together, in a recipe's JSON outputs, as the README writes them (one decimal; differences also
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
    if (results / "timing.json").is_file():  # each system's seconds over the base model's, timed together
        timed = json.loads((results / "timing.json").read_text())["systems"]
        out |= {f"{row['seconds_per_item'] / timed['base']['seconds_per_item']:.1f}" for row in timed.values()}
    return out


@pytest.mark.parametrize("prefix", ROWS)
def test_every_decimal_in_a_readme_fslm_row_comes_from_the_results(prefix: str):
    folder, fewest = ROWS[prefix]
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(prefix))
    quoted = re.findall(r"(?<![\w-])[+-]?\d+\.\d(?![\w.])", row)  # not model names (Qwen2.5-Coder-0.5B)
    assert len(quoted) >= fewest
    known = generated_numbers(
        RESULTS / folder
    )  # the JSON numbers only: a README row quotes accuracies, differences, CIs
    assert [q for q in quoted if q not in known and q.lstrip("+-") not in known] == []


def decimals(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])[+-]?\d+\.\d+(?![\w.])", text)


def analysis_text(results: Path) -> str:
    analysis = results / "ANALYSIS.md"
    return analysis.read_text(encoding="utf-8").rstrip() if analysis.is_file() else ""


def reported_numbers(results: Path) -> set[str]:
    """Every decimal the recipe wrote (RESULTS.md without the hand-written analysis, the per-task comparisons, the
    JSON numbers above), unsigned; a table's two-decimal value also as quoted with one (41.88 as 41.9)."""
    generated = (results / "RESULTS.md").read_text(encoding="utf-8").replace(analysis_text(results), "")
    generated += "".join(p.read_text(encoding="utf-8") for p in (results / "compare").glob("*/compare.md"))
    known = set(decimals(generated)) | generated_numbers(results)
    known |= {f"{float(k):.1f}" for k in known if len(k.split(".")[1]) > 1}
    return {k.lstrip("+-") for k in known}


@pytest.mark.parametrize("folder", ["fslm_repro_pilot", "fslm_repro"])
def test_every_decimal_in_the_hand_written_analysis_is_one_the_recipe_wrote(folder: str):
    """ANALYSIS.md is written by a person from the tables; its numbers must be the tables', not remembered or rounded
    differently."""
    results = RESULTS / folder
    text = analysis_text(results)
    if not text:
        pytest.skip(f"no ANALYSIS.md in {results.relative_to(REPO)} yet")
    assert text in (results / "RESULTS.md").read_text(encoding="utf-8"), (
        "RESULTS.md includes ANALYSIS.md verbatim: rerun the report step"
    )
    assert len(decimals(text)) >= 10
    known = reported_numbers(results)
    assert [d for d in decimals(text) if d.lstrip("+-") not in known] == []
