"""The README's pilot row quotes numbers from the committed pilot results: each must be one the recipe generated."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PILOT = REPO / "benchmarks" / "results" / "fslm_repro_pilot"


def generated_numbers() -> set[str]:
    """Every macro, macro difference, CI bound, held-out macro and s/item ratio in the pilot's JSON outputs, as the
    README writes them (one decimal; differences also without their sign)."""
    values: list[float] = []
    for summary in (PILOT / "runs").glob("*/summary.json"):
        values.append(json.loads(summary.read_text())["macro_acc"])
    for cmp in (PILOT / "compare").glob("*/compare.json"):
        macro = json.loads(cmp.read_text())["tasks"]["macro"]
        values += [macro["diff"], *macro["ci95"], -macro["diff"]]
    values += json.loads((PILOT / "select.json").read_text())["heldout_macro"].values()
    out = {f"{100 * v:.1f}" for v in values} | {f"{100 * v:+.1f}" for v in values}
    cost = {p.parent.name: json.loads(p.read_text())["cost"]["seconds_per_item"] for p in (PILOT / "runs").glob("*/summary.json")}
    out.add(f"{cost['stack-trained'] / cost['base']:.1f}")
    return out


def test_every_decimal_in_the_readme_pilot_row_comes_from_the_results():
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| FSLM reproduction, pilot scale"))
    quoted = re.findall(r"(?<![\w-])[+-]?\d+\.\d(?![\w.])", row)  # not model names (Qwen2.5-Coder-0.5B)
    assert len(quoted) >= 20
    known = generated_numbers()
    assert [q for q in quoted if q not in known and q.lstrip("+-") not in known] == []
