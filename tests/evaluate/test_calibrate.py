"""`fslm eval calibrate`: a signal's calibration fitted on one run and measured on another, from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.errors import DataError, InputError
from fslm.evaluate.calibrate import calibrate_runs, calibration_markdown, write_calibration

runner = CliRunner()


def _run(folder: Path, tasks: dict[str, float], n: int, seed: int, shift: float = -2.5) -> tuple[Path, Path]:
    """A run folder whose option scores are 3x the logits the gold option is drawn from (overconfident), and a
    signals file whose `verify` is a shifted logit of the true P(right): low for answers that are right often."""
    rng = np.random.default_rng(seed)
    rows, signals = [], []
    for task, spread in tasks.items():
        for i in range(n):
            logits = rng.normal(0.0, spread, size=4)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            gold = int(rng.choice(4, p=probs))
            pred = int(np.argmax(logits))
            p_right = float(probs[pred])
            rows.append(
                {
                    "id": f"{task}/{seed}/{i}",
                    "task": task,
                    "choice_scores": [float(x) for x in 3 * logits],
                    "prediction": pred,
                    "gold": gold,
                    "correct": pred == gold,
                }
            )
            logit = np.log(p_right / (1 - p_right + 1e-12) + 1e-12)
            signals.append(
                {"task": task, "id": rows[-1]["id"], "verify": float(1 / (1 + np.exp(-(0.5 * logit + shift))))}
            )
    folder.mkdir(parents=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sig = folder.parent / f"{folder.name}-signals.jsonl"
    sig.write_text("".join(json.dumps(s) + "\n" for s in signals))
    return folder, sig


@pytest.fixture()
def runs(tmp_path):
    tasks = {"alpha": 1.5, "beta": 2.5}
    return _run(tmp_path / "fit", tasks, 400, seed=1), _run(tmp_path / "test", tasks, 400, seed=2)


def test_choice_confidence_is_scaled_down_and_gets_calibrated(runs, tmp_path):
    (fit, _), (test, _) = runs
    report = calibrate_runs(fit, test)
    assert list(report["tasks"]) == ["alpha", "beta"] and report["skipped_tasks"] == []
    for e in report["tasks"].values():
        assert 2.2 < e["temperature"] < 4.0  # the scores were 3x the true logits
        assert e["ece_after"] < 0.06 < e["ece_before"] and e["ece_diff_ci95"][1] < 0
        assert e["rows_where_correct_differs_from_argmax"] == 0
        assert e["n_fit"] == e["n_test"] == 400
    assert report["tasks_ece_lower"] == 2 and "platt_pooled" not in report
    out = write_calibration(report, tmp_path / "out")
    assert {p.name for p in out.iterdir()} == {"calibration.json", "calibration.md", "calibration.png"}
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "| alpha | 400 / 400 |" in (out / "calibration.md").read_text()


def test_a_shifted_probability_needs_platt_and_its_auroc_is_reported(runs):
    (fit, fit_sig), (test, sig) = runs
    report = calibrate_runs(fit, test, signal="verify", fit_signals=fit_sig, signals=sig)
    for e in report["tasks"].values():
        assert e["auroc"] > 0.6 and e["auroc_ci95"][0] > 0.5  # P(yes) carries the item's real odds
        assert e["ece_after_platt"] < e["ece_after"] and e["ece_after_platt"] < 0.08
        assert e["ece_before"] > 0.2 and e["mean_conf_before"] < 0.3 < e["acc"]
        assert e["nll_after_platt"] < e["nll_fit_rate"]  # it beats the constant once calibrated: it is informative
    assert report["tasks_auroc_above_half"] == 2
    from sklearn.metrics import roc_auc_score

    rows = [json.loads(line) for line in (test / "items.jsonl").read_text().splitlines()]
    p_yes = {json.loads(line)["id"]: json.loads(line)["verify"] for line in sig.read_text().splitlines()}
    alpha = [r for r in rows if r["task"] == "alpha"]
    expected = roc_auc_score([r["correct"] for r in alpha], [p_yes[r["id"]] for r in alpha])
    assert report["tasks"]["alpha"]["auroc"] == pytest.approx(expected, abs=1e-6)
    assert "AUROC" in calibration_markdown(report)


def test_the_margin_is_calibrated_as_a_probability_of_being_right(runs):
    (fit, _), (test, _) = runs
    report = calibrate_runs(fit, test, signal="margin")
    for e in report["tasks"].values():
        assert e["auroc"] > 0.6 and "platt" in e  # a binary signal: AUROC, Platt, the rate floor
        assert e["ece_after_platt"] < e["ece_before"]
    rows = [json.loads(line) for line in (test / "items.jsonl").read_text().splitlines()]
    from fslm.stages.conditions import choice_margin

    beta = [choice_margin(r["choice_scores"]) for r in rows if r["task"] == "beta"]
    assert report["tasks"]["beta"]["mean_conf_before"] == pytest.approx(np.mean(beta), abs=1e-6)


def test_bad_signal_inputs(runs, tmp_path):
    (fit, fit_sig), (test, sig) = runs
    with pytest.raises(InputError, match="signals file"):
        calibrate_runs(fit, test, signal="verify")
    with pytest.raises(InputError, match="no signals files"):
        calibrate_runs(fit, test, signal="margin", fit_signals=fit_sig, signals=sig)
    with pytest.raises(DataError, match=r"no 'p_right' values \(it has: verify\)"):
        calibrate_runs(fit, test, signal="p_right", fit_signals=fit_sig, signals=sig)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(sig.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match=r"short.jsonl: no 'verify' value for 1 rows of .*test \(first: 'alpha/2/0'\)"):
        calibrate_runs(fit, test, signal="verify", fit_signals=fit_sig, signals=short)
    for bad_field, message in [
        ({"choice_scores": [0.0, "x"]}, "'choice_scores' must be a list of finite numbers"),
        ({"choice_scores": [0.0, float("nan")]}, "'choice_scores' must be a list of finite numbers"),
        ({"gold": 7}, "must index its 4 options"),
        ({"correct": "yes"}, "needs a boolean 'correct'"),
    ]:
        hostile = tmp_path / f"hostile-{len(list(tmp_path.iterdir()))}"
        hostile.mkdir()
        first = json.loads((test / "items.jsonl").read_text().splitlines()[0]) | bad_field
        (hostile / "items.jsonl").write_text(json.dumps(first) + "\n")
        with pytest.raises(DataError, match=message):
            calibrate_runs(fit, hostile)
    other = tmp_path / "other"
    other.mkdir()
    row = json.loads((test / "items.jsonl").read_text().splitlines()[0]) | {"task": "gamma"}
    (other / "items.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="share no multiple-choice task"):
        calibrate_runs(fit, other)


def test_cli_writes_the_report_and_refuses_mixed_options(runs, tmp_path):
    (fit, fit_sig), (test, sig) = runs
    args = ["eval", "calibrate", "--fit", str(fit), "--run", str(test)]
    result = runner.invoke(app, args + ["--signal", "verify", "--fit-signals", str(fit_sig), "--signals", str(sig)])
    assert result.exit_code == 0, result.output
    assert "| beta | 400 / 400 |" in result.output
    result = runner.invoke(app, args + ["--json", "--out", str(tmp_path / "cal")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["signal"] == "choice" and set(data["tasks"]) == {"alpha", "beta"}
    assert "reliability_before" not in data["tasks"]["alpha"]  # bins go to --out, not the terminal
    assert json.loads((tmp_path / "cal" / "calibration.json").read_text())["tasks"]["alpha"]["reliability_before"]
    for extra, message in [
        (["--signal", "verify"], "needs both --fit-signals and --signals"),
        (["--signals", str(sig)], "no signals files"),
        (["--signal", "margin", "--fit-signals", str(fit_sig), "--signals", str(sig)], "no signals files"),
        (["--signal", "verify", "--signals", str(sig)], "needs both"),
        (["--fit", str(tmp_path / "nothing")], "per-item file not found"),
    ]:
        result = runner.invoke(app, args + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert "error:" in result.output and message in result.output and "Traceback" not in result.output
