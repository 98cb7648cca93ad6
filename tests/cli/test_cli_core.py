"""CLI contract of the foundation verbs: run, models, stack validate; user errors exit 2 without a traceback."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from fslm.cli import app

runner = CliRunner()


@pytest.fixture()
def tiny_stack_file(tiny_model_dir, tmp_path):
    cfg = {
        "name": "tiny",
        "base_model": str(tiny_model_dir),
        "stages": [
            {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 5}},
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "intent"],
                "generation": {"max_new_tokens": 5},
            },
        ],
    }
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_json_has_answer_and_trace(tiny_stack_file):
    result = runner.invoke(app, ["run", "--stack", str(tiny_stack_file), "--json", "What is the capital of France?"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(data["answer"], str)
    assert [t["stage"] for t in data["trace"]] == ["intent", "answer"]
    for rec in data["trace"]:
        assert isinstance(rec["input"], str) and isinstance(rec["output"], str)
        assert (
            isinstance(rec["tokens_in"], int)
            and isinstance(rec["tokens_out"], int)
            and isinstance(rec["seconds"], float)
        )
    assert data["answer"] == data["trace"][-1]["output"]


def test_run_panels_show_each_stage(tiny_stack_file):
    result = runner.invoke(app, ["run", "--stack", str(tiny_stack_file), "Two plus two?"])
    assert result.exit_code == 0, result.output
    assert "1. intent" in result.stdout and "2. answer" in result.stdout and "answer" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--stack", "{stack}", ""], "empty prompt"),
        (["run", "--stack", "{stack}", "fox " * 3000], "max_prompt_tokens"),
        (["run", "--stack", "{missing}", "hi"], "stack file not found"),
    ],
)
def test_user_errors_exit_2_without_traceback(tiny_stack_file, tmp_path, args, message):
    args = [a.format(stack=tiny_stack_file, missing=tmp_path / "none.yaml") for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_unknown_model_lists_known_names(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump({"name": "x", "base_model": "gpt-17", "stages": [{"name": "answer", "instruction": "A."}]})
    )
    result = runner.invoke(app, ["run", "--stack", str(path), "hi"])
    assert result.exit_code == 2 and "smollm2-135m" in result.output and "pip install" in result.output


def test_stack_validate_ok_and_broken(tiny_stack_file, tmp_path):
    ok = runner.invoke(app, ["stack", "validate", str(tiny_stack_file)])
    assert ok.exit_code == 0 and "ok" in ok.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: b\nstages:\n  - name: answer\n    instruction: A.\n    generation: {max_new_tokens: -3}\n")
    bad = runner.invoke(app, ["stack", "validate", str(broken)])
    assert bad.exit_code == 2
    assert "stages.0.generation.max_new_tokens" in bad.output and str(broken) in bad.output


def test_stack_validate_notes_a_stage_nobody_reads(tmp_path):
    stack = tmp_path / "unread.yaml"
    stack.write_text(
        "name: u\nstages:\n  - {name: intent, instruction: R.}\n  - {name: answer, instruction: A., sees: [prompt]}\n"
    )
    result = runner.invoke(app, ["stack", "validate", str(stack)])
    assert result.exit_code == 0 and "no later stage reads the text of stage 'intent'" in " ".join(
        result.output.split()
    )


def test_stack_validate_missing_adapter(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump({"name": "x", "stages": [{"name": "answer", "instruction": "A.", "adapter": "adapters/answer"}]})
    )
    result = runner.invoke(app, ["stack", "validate", str(path)])
    assert result.exit_code == 2 and "stages.0.adapter" in result.output


def test_models_lists_embedded(isolated_cache):
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    names = {m["name"] for m in json.loads(result.stdout)}
    assert {"smollm2-135m", "qwen2.5-coder-0.5b"} <= names
