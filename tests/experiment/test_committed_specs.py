"""Every experiment spec committed under benchmarks/experiments/ stays valid as the spec schema evolves, and its
stack files validate (schema and graph; models need not be installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fslm.config import load_stack_config
from fslm.experiment import build_plan, load_spec
from fslm.experiment.plan import marker_matches, marker_path, step_fingerprint

ROOT = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"
SPECS = sorted(ROOT.glob("*.yaml"))


def test_there_are_committed_specs():
    assert {p.stem for p in SPECS} >= {
        "fslm_repro",
        "stacks",
        "teach_kd",
        "teach_w2s",
        "teach_curate",
        "teach_curate_judge",
        "teach_kd_token",
        "teach_synth",
        "helpers_prompt",
    }


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_a_committed_spec_loads_and_plans(path):
    spec = load_spec(path)
    plan = build_plan(spec)
    assert plan.jobs and all(name in plan.jobs for name in (f"eval:{s}" for s in spec.systems if spec.systems[s].test))


@pytest.mark.parametrize("path", sorted(ROOT.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_committed_stack_file_validates(path):
    assert load_stack_config(path).stages


def _committed_markers() -> list[tuple[Path, str, Path]]:
    found = []
    for path in SPECS:
        spec = load_spec(path)
        for step in spec.training:
            marker = marker_path(spec, step)
            if marker.is_file():
                found.append((path, step, marker))
    return found


@pytest.mark.parametrize("path,step,marker", _committed_markers(), ids=lambda x: x if isinstance(x, str) else "")
def test_a_committed_step_marker_still_matches_its_step(path, step, marker):
    # A field added to a step kind later must not invalidate the markers of committed runs (they would retrain).
    spec = load_spec(path)
    stored = json.loads(marker.read_text(encoding="utf-8"))["fingerprint"]
    assert marker_matches(stored, step_fingerprint(spec, step))
