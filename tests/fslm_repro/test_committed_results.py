"""The README's FSLM rows quote numbers from the committed results: each must be one the recipe generated."""

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
    """Every macro (test and held-out runs), macro difference (also with one task left out), CI bound, held-out macro and the trained stack's s/item ratio to the base model in a
    recipe's JSON outputs, as the README writes them (one decimal; differences also without their sign)."""
    values: list[float] = []
    for summary in [*(results / "runs").glob("*/summary.json"), *(results / "select").glob("*/summary.json")]:
        values.append(json.loads(summary.read_text())["macro_acc"])
    for cmp in (results / "compare").glob("*/compare.json"):
        data = json.loads(cmp.read_text())
        for macro in [data["tasks"]["macro"], *data.get("macro_without", {}).values()]:
            values += [macro["diff"], *macro["ci95"], -macro["diff"]]
    if (results / "select.json").is_file():
        values += json.loads((results / "select.json").read_text())["heldout_macro"].values()
    out = {f"{100 * v:.1f}" for v in values} | {f"{100 * v:+.1f}" for v in values}
    cost = {p.parent.name: json.loads(p.read_text())["cost"]["seconds_per_item"] for p in (results / "runs").glob("*/summary.json")}
    if {"stack-trained", "base"} <= cost.keys():
        out.add(f"{cost['stack-trained'] / cost['base']:.1f}")
    return out


@pytest.mark.parametrize("prefix", ROWS)
def test_every_decimal_in_a_readme_fslm_row_comes_from_the_results(prefix: str):
    folder, fewest = ROWS[prefix]
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(prefix))
    quoted = re.findall(r"(?<![\w-])[+-]?\d+\.\d(?![\w.])", row)  # not model names (Qwen2.5-Coder-0.5B)
    assert len(quoted) >= fewest
    known = generated_numbers(RESULTS / folder)
    assert [q for q in quoted if q not in known and q.lstrip("+-") not in known] == []
