"""`fslm stack validate` on graphs: what runs when, who answers, and graph errors as one line naming the field."""

from __future__ import annotations

import copy

import yaml
from typer.testing import CliRunner

from fslm.cli import app

from .test_graph import BRANCHED

runner = CliRunner()


def validate(tmp_path, data):
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["stack", "validate", str(path)])
    return result, " ".join(result.output.split())


def test_validate_shows_waves_and_answers(tmp_path):
    result, text = validate(tmp_path, BRANCHED)
    assert result.exit_code == 0, text
    assert "runs: [facts, calc (tool)] -> [pick (score), answer]" in text
    assert "answer: pick (prompts with options), answer (prompts without)" in text


def test_validate_notes_a_score_stage_without_a_condition(tmp_path):
    data = copy.deepcopy(BRANCHED)
    del data["stages"][1]["when"]
    result, text = validate(tmp_path, data)
    assert result.exit_code == 0 and "score stage 'pick' has no `when: has_options`" in text


def test_validate_reports_a_cycle_as_one_error(tmp_path):
    data = copy.deepcopy(BRANCHED)
    data["stages"][0]["sees"] = ["answer"]
    result, text = validate(tmp_path, data)
    assert result.exit_code == 2 and "stages.0.sees.0: the stages see each other in a cycle" in text
    assert "Traceback" not in result.output
