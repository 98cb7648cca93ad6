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


def test_validate_a_stack_of_every_kind(tmp_path, tiny_model_dir):
    from .test_kinds_config import ALL

    data = copy.deepcopy(ALL)
    data["stages"][6]["model"] = str(tiny_model_dir)
    result, text = validate(tmp_path, data)
    assert result.exit_code == 0, text
    assert (
        "runs: [draft, answer (vote)] -> [pick (score), vpick (vote), check (verify)] -> [retry, big (escalate)]"
        in text
    )
    assert "escalate: big answers with model" in text and "below 0.9, else keeps 'vpick'" in text


def _one_error(result, text, expected):
    assert result.exit_code == 2 and expected in text and "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and result.output.count("error:") == 1


def test_validate_reports_bad_kinds_as_one_error(tmp_path, tiny_model_dir):
    from .test_kinds_config import ALL

    data = copy.deepcopy(ALL)
    data["stages"][6]["escalate"]["threshold"] = 1.5
    _one_error(*validate(tmp_path, data), "stages.6.escalate.threshold: Input should be less than or equal to 1")
    data = copy.deepcopy(ALL)
    data["stages"][6]["model"] = "no-such-model-xyz"
    _one_error(*validate(tmp_path, data), "stages.6.model: unknown model 'no-such-model-xyz'")
    data = copy.deepcopy(ALL)
    del data["stages"][6]["model"]
    data["stages"][6]["escalate"]["stack"] = "missing.yaml"
    _one_error(*validate(tmp_path, data), "stages.6.escalate.stack: no stack file at")
    data["stages"][6]["escalate"]["stack"] = "larger.yaml"
    stage = {"name": "a", "instruction": "A.", "model": "nope-xyz", "score": {}}
    larger = {"name": "larger", "base_model": "tiny", "stages": [stage]}
    (tmp_path / "larger.yaml").write_text(yaml.safe_dump(larger))
    _one_error(*validate(tmp_path, data), "larger.yaml: stages.0.model: unknown model 'nope-xyz'")
    stage.update(model=str(tiny_model_dir))
    del stage["score"]  # valid, but it generates where 'vpick' scores options
    (tmp_path / "larger.yaml").write_text(yaml.safe_dump(larger))
    _one_error(*validate(tmp_path, data), "'vpick' scores options, but stack 'larger' answers prompts with options by")


def test_fslm_run_answers_with_every_kind(tmp_path, tiny_model_dir):
    """`fslm run --json` on a stack with verify, vote, escalate and a confidence condition (the tiny model plays both
    the small and the larger model: one engine, shared)."""
    import json

    from .test_kinds_config import ALL

    data = copy.deepcopy(ALL)
    data["base_model"] = data["stages"][6]["model"] = str(tiny_model_dir)
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(data))
    for prompt, answer_stages in [
        ("Which planet is largest?\nA. Mars\nB. Jupiter", {"big"}),
        ("Two plus two?", {"answer", "retry"}),
    ]:
        result = runner.invoke(app, ["run", "--stack", str(path), "--json", "--no-log", prompt])
        assert result.exit_code == 0, result.output
        out = json.loads(result.output[result.output.index("{") :])  # after the status line (stderr, mixed in)
        assert out["answer_stage"] in answer_stages
        kinds = {r["stage"]: r["kind"] for r in out["trace"]}
        assert kinds["check"] == "verify" and kinds["big"] == "escalate" and kinds["vpick"] == "vote"


def test_fslm_serve_answers_with_every_kind(tiny_engine, monkeypatch, tmp_path):
    """The server runs the stack through `Stack.run_batch`: the new kinds' records reach `fslm_trace`."""
    from fastapi.testclient import TestClient

    from fslm.config import parse_stack_config
    from fslm.serve import ServeSettings, create_app
    from fslm.settings import reset_settings
    from fslm.stack import Stack

    from .counting import Counting
    from .test_kinds_config import ALL

    monkeypatch.delenv("FSLM_API_KEY", raising=False)
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path))
    reset_settings()
    stack = Stack(parse_stack_config(ALL), tiny_engine, engines={"big": Counting(tiny_engine, model_ref="big")})
    body = {"model": "all", "messages": [{"role": "user", "content": "Which planet is largest?\nA. Mars\nB. Jupiter"}]}
    with TestClient(create_app(stack, ServeSettings(trace=True))) as client:
        resp = client.post("/v1/chat/completions", json={**body, "fslm_trace": True})
    reset_settings()
    assert resp.status_code == 200, resp.text
    stages = {s["stage"]: s for s in resp.json()["fslm_trace"]["stages"]}
    assert stages["big"]["kind"] == "escalate" and stages["big"]["decision"]
    assert resp.json()["choices"][0]["message"]["content"] == stages["big"]["output"]


def test_fslm_run_panels_say_which_branch_ran(tmp_path, tiny_model_dir):
    from .test_kinds_config import ALL

    data = copy.deepcopy(ALL)
    data["base_model"] = data["stages"][6]["model"] = str(tiny_model_dir)
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(
        app, ["run", "--stack", str(path), "--no-log", "Which planet is largest?\nA. Mars\nB. Jupiter"]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "mean option probabilities over 2 drafts of 'draft'" in text
    assert "confidence of 'vpick'" in text and "threshold 0.9" in text
    skipped = [n for n, s in enumerate(data["stages"]) if s.get("when") == "no_options"]
    assert skipped and "skipped (when: no_options, and the prompt has options)" in text  # a line, not a panel
    assert "(empty)" not in text


def test_validate_default_checks_the_packaged_stack():
    result = runner.invoke(app, ["stack", "validate", "default"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "stack 'default'" in text and "pick (prompts with options), answer (prompts without)" in text
