"""`fslm eval` / `fslm eval compare` exit codes and messages: user errors are exit 2 with no traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.settings import reset_settings


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text
    return result.exit_code, " ".join(text.split())


def test_unknown_task_lists_the_known_ones(tiny_data):
    code, text = run("eval", "--model", "nope", "--tasks", "arc_easy,squad")
    assert code == 2 and "unknown task 'squad'" in text and "hellaswag" in text and "gsm8k" in text


def test_missing_data_dir_names_the_env_var(tiny_data, monkeypatch, tmp_path):
    monkeypatch.setenv("FSLM_DATA_DIR", str(tmp_path / "nowhere"))
    reset_settings()
    code, text = run("eval", "--model", "nope", "--tasks", "arc_easy")
    assert code == 2 and "FSLM_DATA_DIR" in text


def test_malformed_record_names_file_and_line(tiny_data):
    path = tiny_data / "arc_easy" / "arc_easy.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + '{"query": "Question: x?", "choices": ["a"], "gold": 0}\n')
    code, text = run("eval", "--model", "nope", "--tasks", "arc_easy")
    assert code == 2 and "arc_easy.jsonl:2" in text and "malformed record" in text


def test_system_choice_and_option_errors(tiny_data):
    assert run("eval", "--tasks", "arc_easy")[0] == 2
    assert run("eval", "--model", "a", "--stack", "b", "--tasks", "arc_easy")[0] == 2
    code, text = run("eval", "--model", "nope", "--tasks", "arc_easy", "--split", "train")
    assert code == 2 and "no split 'train'" in text
    code, text = run("eval", "--model", "no-such-model-anywhere", "--tasks", "arc_easy")
    assert code == 2


def test_eval_and_compare_end_to_end(tiny_data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, text = run("eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "10", "--out", str(out))
    assert code == 0, text
    assert "larger than the 3 items" in text and "arc_easy" in text
    assert json.loads((out / "summary.json").read_text())["tasks"]["arc_easy"]["n"] == 3
    code, text = run("eval", "compare", str(out), str(out), "--json")
    assert code == 0 and '"diff": 0.0' in text
    code, text = run("eval", "compare", str(out), str(tmp_path / "missing"))
    assert code == 2 and "no items.jsonl" in text


def test_stack_with_raw_answer_and_a_stage_cache(tiny_data, tiny_model_dir, tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        json.dumps(
            {
                "name": "two",
                "base_model": str(tiny_model_dir),
                "stages": [
                    {"name": "facts", "instruction": "Facts.", "generation": {"max_new_tokens": 4}},
                    {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"]},
                ],
            }
        )
    )
    cache = tmp_path / "stages.sqlite"
    for out in ("a", "b"):
        code, text = run(
            "eval",
            "--stack",
            str(stack),
            "--tasks",
            "arc_easy",
            "--answer-format",
            "raw",
            "--stage-cache",
            str(cache),
            "--out",
            str(tmp_path / out),
            "--json",
        )
        assert code == 0, text
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["system"] == "stack:two+raw-answer" and summary["answer_format"] == "raw"
    session = json.loads((tmp_path / "b" / "run.json").read_text())["sessions"][-1]
    assert session["stage_cache"]["hits"] == 3 and session["stage_cache"]["misses"] == 0  # facts for 3 items, reused
    code, text = run("eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--stage-cache", str(cache))
    assert code == 2 and "--stage-cache applies to --stack systems only" in text
    code, text = run("eval", "--stack", str(stack), "--tasks", "arc_easy", "--answer-format", "chat")
    assert code == 2 and "expected one of stack, raw" in text


def _rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]


def test_eval_with_an_expert_delta_scores_under_the_fused_distribution(
    tiny_data, tiny_model_dir, tiny_adapters, tmp_path
):
    """--model M --expert-delta TUNED:BASE writes a run recorded as proxy-tuned; alpha 0 scores as M alone."""
    model, adapter = str(tiny_model_dir), str(tiny_adapters["intent"])
    delta = f"{model}+{adapter}:{model}"
    common = ["eval", "--model", model, "--tasks", "arc_easy", "--json"]
    assert run(*common, "--out", str(tmp_path / "plain"))[0] == 0
    code, text = run(*common, "--expert-delta", delta, "--delta-alpha", "1.5", "--out", str(tmp_path / "proxy"))
    assert code == 0, text
    summary = json.loads((tmp_path / "proxy" / "summary.json").read_text())
    assert summary["proxy_tuning"] == {"large": model, "tuned": f"{model}+{adapter}", "base": model, "alpha": 1.5}
    assert "delta(" in summary["system"] and summary["tasks"]["arc_easy"]["n"] == 3
    assert "delta(" in json.loads((tmp_path / "proxy" / "run.json").read_text())["identity"]["system"]
    plain, steered = _rows(tmp_path / "plain"), _rows(tmp_path / "proxy")
    assert (
        max(abs(a - b) for p, q in zip(plain, steered) for a, b in zip(p["choice_scores"], q["choice_scores"])) > 0.01
    )
    code, text = run(*common, "--expert-delta", delta, "--delta-alpha", "0", "--out", str(tmp_path / "zero"))
    assert code == 0, text
    for p, q in zip(plain, _rows(tmp_path / "zero"), strict=True):
        assert p["choice_scores"] == pytest.approx(q["choice_scores"], abs=1e-3)


def test_expert_delta_generates_through_the_fusion(tiny_data, tiny_model_dir, tiny_adapters, tmp_path):
    from fslm.evaluate import evaluate, load_system

    model = str(tiny_model_dir)
    system = load_system(model=model, expert_delta=f"{model}+{tiny_adapters['answer']}:{model}", delta_alpha=2.0)
    assert system.load_args["expert_delta"].startswith(str(tiny_model_dir.resolve()))
    summary = evaluate(system, ["gsm8k"], 2, out_dir=tmp_path / "gen", gen_max_tokens=6)
    rows = _rows(tmp_path / "gen")
    assert summary.data["n_items"] == 2 and all(0 < r["tokens_out"] <= 6 for r in rows)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stack", "default"], "applies to --model"),
        (["--model", "{model}", "--engine", "llamacpp"], "--engine hf"),
        (["--model", "{model}", "--engine", "auto"], "--engine hf"),
        (["--model", "{model}", "--expert-delta", "{model}"], "expected TUNED:BASE"),
        (["--model", "{model}", "--expert-delta", "{model}+{missing}:{model}"], "is not a folder"),
        (["--model", "{model}", "--delta-alpha", "nan"], "finite number"),
    ],
)
def test_expert_delta_refusals(tiny_data, tiny_model_dir, tmp_path, extra, message):
    fill = {"model": str(tiny_model_dir), "missing": str(tmp_path / "missing")}
    args = [a.format(**fill) for a in extra]
    if "--expert-delta" not in args:
        args += ["--expert-delta", f"{tiny_model_dir}:{tiny_model_dir}"]
    code, text = run("eval", "--tasks", "arc_easy", *args)
    assert code == 2 and text.startswith("error:") and message in text, text


@pytest.mark.slow
def test_real_default_model_on_two_tasks(tmp_path, monkeypatch):
    """The issue's acceptance command, on 4 items per task (the real run is in benchmarks/results)."""
    from .conftest import REAL_DATA

    if not (REAL_DATA / "README.md").is_file():
        pytest.skip("benchmark data not present")
    out = tmp_path / "real"
    code, text = run(
        "eval", "--model", "smollm2-135m", "--tasks", "arc_easy,hellaswag", "--limit", "4", "--out", str(out)
    )
    assert code == 0, text
    data = json.loads((out / "summary.json").read_text())
    assert data["tasks"]["arc_easy"]["n"] == 4 and data["tasks"]["hellaswag"]["acc_norm"] is not None
    assert all((out / f).is_file() for f in ("items.jsonl", "table.md", "chart.png"))


def test_eval_in_bfloat16_and_a_bad_dtype(tiny_data, tiny_model_dir, tmp_path):
    code, text = run("eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--dtype", "int4")
    assert code == 2 and "--dtype 'int4'" in text
    out = tmp_path / "bf16"
    code, text = run(
        "eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--dtype", "bfloat16", "--out", str(out)
    )
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["arc_easy"]["n"] == 3
    assert "bfloat16" in json.dumps(summary)
    # An fp32 run into the bfloat16 run's folder is another system's run: refused, not mixed.
    code, text = run("eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--out", str(out))
    assert code == 2 and "holds a different run" in text and "bfloat16" in text
