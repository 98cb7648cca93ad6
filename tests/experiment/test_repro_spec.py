"""The reproduction spec's `committed` scale: over the committed run folders it runs no model and gives the committed
numbers (summaries, paired comparisons, held-out selection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fslm.experiment import build_plan, load_spec, run_experiment

from .conftest import needs_data

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "benchmarks" / "experiments" / "fslm_repro.yaml"
REPRO = ROOT / "benchmarks" / "results" / "fslm_repro"
needs_repro = pytest.mark.skipif(
    not (SPEC.is_file() and (REPRO / "runs").is_dir()), reason="the committed fslm_repro results are not here"
)


def committed_compare(a: str, b: str, heldout: bool) -> dict:
    prefix = "heldout-" if heldout else ""
    for name in (f"{a}-vs-{b}", f"{a.replace('stack-trained', 'trained')}-vs-{b.replace('stack-trained', 'trained')}"):
        path = REPRO / "compare" / f"{prefix}{name}" / "compare.json"
        if path.is_file():
            return json.loads(path.read_text())
    raise AssertionError(f"no committed comparison of {a} and {b}")


@needs_data
@needs_repro
def test_the_repro_spec_regenerates_the_committed_numbers_without_running_a_model(tmp_path):
    out = tmp_path / "out"
    for sub in ("runs", "select"):  # the committed run folders, linked (never written: every job is done)
        (out / sub).mkdir(parents=True)
        for run in (REPRO / sub).iterdir():
            (out / sub / run.name).symlink_to(run)
    overrides = {"scale": "committed", "out": str(out)}
    spec = load_spec(SPEC, overrides)
    assert spec.training == {}  # nothing is trained: the systems read the committed stacks and adapters
    plan = build_plan(spec)
    assert {job.key: job.progress for job in plan.jobs.values() if job.state != "done"} == {}
    result = run_experiment(SPEC, overrides=overrides)
    assert result.ran == [] and not result.failed and result.report == out / "EXPERIMENT.md"
    results = json.loads((out / "results.json").read_text())
    assert results["items_per_system"] == 3300
    for name, entry in results["systems"].items():
        committed = json.loads((REPRO / "runs" / name / "summary.json").read_text())
        assert entry["macro_acc"] == committed["macro_acc"] and entry["macro_ci95"] == committed["macro_ci95"], name
        assert entry["tasks"]["boolq"]["acc"] == committed["tasks"]["boolq"]["acc"]
        assert entry["seconds_per_item"] == committed["cost"]["seconds_per_item"]
    for pair in results["comparisons"]:
        committed = committed_compare(pair["a"], pair["b"], pair["heldout"])
        assert pair["tasks"]["macro"] == committed["tasks"]["macro"], (pair["a"], pair["b"])
        assert pair["tasks"]["boolq"] == committed["tasks"]["boolq"]
    select = json.loads((REPRO / "select.json").read_text())
    sel = results["selection"]
    assert sel["chosen"] == select["chosen"] == "stack-trained"
    assert {n: round(v, 4) for n, v in sel["heldout_macro"].items()} == select["heldout_macro"]
    assert sorted(sel["beaten_by_context"]) == sorted(select["beaten_by_context"])
    md = (out / "EXPERIMENT.md").read_text()
    assert (
        "| stack-trained | trained stack | **31.0** |" in md
        and "| base | base model alone (smollm2-135m) | **34.2** |" in md
    )
    assert "| stack-trained | base | **-3.2** | -5.2 to -1.1 |" in md  # RESULTS.md: -3.2 (-5.2 to -1.1)


def test_every_scale_of_the_repro_spec_validates_and_keeps_the_full_scale_settings():
    full = load_spec(SPEC)
    assert list(full.training) == [
        "distilled",
        "trained",
        "corpus",
        "corpus-tail",
        "retrieval",
        "retrieval-tail",
        "scorer-pairs",
        "scorer",
    ]
    distill = full.training["distilled"].body
    assert (distill.teacher, distill.limit, distill.batch_size, distill.hints) == ("qwen2.5-coder-0.5b", 2000, 8, True)
    for step in ("trained", "scorer"):  # rank 4 = the largest whose 4 fp16 adapters fit 10 MB on SmolLM2-135M
        options = full.training[step].body.options
        assert (options["rank"], options["alpha"], options["save_dtype"]) == (4, 8, "float16")
    assert full.training["scorer"].body.options["max_length"] == 1024
    assert full.training["corpus-tail"].body.eval_tail == 300 and full.training["scorer-pairs"].body.records == 1000
    assert (len(full.systems), len(full.comparisons), full.evaluation.limit, full.selection.limit) == (17, 28, 300, 50)
    assert not (full.out_dir.resolve()).is_relative_to(REPRO.resolve())  # a rebuild never writes the committed results
    for scale in ("smoke", "pilot", "committed"):
        spec = load_spec(SPEC, {"scale": scale})
        assert set(spec.systems) == set(full.systems) and len(spec.comparisons) == 28, scale
    assert load_spec(SPEC, {"scale": "committed"}).out_dir.resolve() == REPRO.resolve()
