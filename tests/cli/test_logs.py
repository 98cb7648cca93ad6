"""`fslm logs ...` and the logging of `fslm run` / `fslm generate`: what a person sees, and exit 2 on bad input."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

import fslm.logs.recording as logrecord
from fslm.cli import app
from fslm.logs import record, stack_entry
from fslm.settings import reset_settings

runner = CliRunner()


@pytest.fixture()
def log_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLM_LOG", "1")
    monkeypatch.setenv("FSLM_LOG_DB", str(tmp_path / "log" / "logs.db"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(logrecord, "_noted", set())
    reset_settings()
    yield tmp_path / "log" / "logs.db"
    reset_settings()


def add(prompt: str, answer: str, *, created: float | None = None, error: str | None = None) -> int:
    ident = {"stack": "tiny", "config_sha256": "ab" * 32, "adapters": {}, "engine": {"model_ref": "m", "dtype": "f"}}
    e = stack_entry("run", prompt, ident, error=error, started=created or time.time(), wall_seconds=0.5)
    e["answer"] = answer
    e["trace"] = [
        {"stage": "intent", "input": "in", "output": "wants a city", "tokens_in": 3, "tokens_out": 2, "seconds": 0.1},
        {"stage": "answer", "input": "in2", "output": answer, "tokens_in": 4, "tokens_out": 1, "seconds": 0.2},
    ]
    return record(e)


@pytest.fixture()
def filled(log_file) -> list[int]:
    return [
        add("What is the capital of France?", "Paris.", created=time.time() - 3 * 86_400),
        add("Which planet is largest?", "Jupiter."),
        add("Two plus two?", "", error="InputError: boom"),
    ]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def lines_of(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_logs_alone_lists_recent_runs(filled):
    result = invoke("logs")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert (
        "3 runs (newest first)" in text
        and "Which planet is largest?" in text
        and "Jupiter." in text
        and "InputError: boom" in text
    )
    assert text.index("Two plus two?") < text.index("Which planet") < text.index("capital of France")  # newest first
    assert [r["id"] for r in lines_of(invoke("logs", "list", "-n", "2", "--json").stdout)] == filled[:0:-1]
    assert [r["id"] for r in lines_of(invoke("logs", "-n", "1", "--json").stdout)] == [filled[2]]


def test_show_prints_the_trace_panels(filled):
    result = invoke("logs", "show", str(filled[1]))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "1. intent" in out and "2. answer" in out and "wants a city" in out and "Jupiter." in out
    assert "tiny" in out and "ababababab" in out  # stack and its config hash
    assert "in2" not in out and "in2" in invoke("logs", "show", str(filled[1]), "--inputs").stdout
    whole = json.loads(invoke("logs", "show", str(filled[1]), "--json").stdout)
    assert whole["id"] == filled[1] and whole["trace"][1]["output"] == "Jupiter."
    failed = invoke("logs", "show", str(filled[2]))
    assert failed.exit_code == 0 and "InputError: boom" in failed.output


def test_search(filled):
    result = invoke("logs", "search", "planet")
    assert result.exit_code == 0 and "Which planet" in result.stdout and "France" not in result.stdout
    none = invoke("logs", "search", "zebra")
    assert none.exit_code == 0 and "no run matches 'zebra'" in none.output


def test_export_to_stdout_and_file(filled, tmp_path):
    result = invoke("logs", "export", "--jsonl")
    assert result.exit_code == 0
    assert [e["id"] for e in lines_of(result.stdout)] == filled  # oldest first
    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 86_400))
    assert [e["id"] for e in lines_of(invoke("logs", "export", "--since", since).stdout)] == filled[1:]
    out = tmp_path / "export.jsonl"
    done = invoke("logs", "export", "--out", str(out))
    assert done.exit_code == 0 and f"exported 3 runs to {out}" in done.output
    assert len(out.read_text().splitlines()) == 3


def test_rm_prune_and_path(filled, log_file):
    assert "removed 1 run" in invoke("logs", "rm", str(filled[0])).output
    assert "removed 1 run" in invoke("logs", "prune", "--keep", "1").output
    assert [r["id"] for r in lines_of(invoke("logs", "--json").stdout)] == [filled[2]]
    assert invoke("logs", "path").stdout.strip() == str(log_file)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "999"], "no run 999"),
        (["show", " "], "ID is empty"),
        (["rm", "1", "999"], "no run 999"),
        (["prune"], "--older-than DAYS or --keep N"),
        (["prune", "--keep", "-2"], "--keep must be >= 0"),
        (["prune", "--older-than", "nan"], "--older-than"),
        (["list", "-n", "0"], "-n must be at least 1"),
        (["export", "--since", "last week"], "--since 'last week': not an ISO date"),
        (["export", "--out", "{file}/x.jsonl"], "--out"),
        (["search", ""], "TEXT is empty"),
        (["list", "-n", "many"], "-n"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(filled, tmp_path, args, message):
    (tmp_path / "file").write_text("")
    result = invoke("logs", *[a.replace("{file}", str(tmp_path / "file")) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.count("error:") == 1
    assert len(lines_of(invoke("logs", "--json").stdout)) == 3  # nothing removed by a refused command


def test_a_corrupt_log_is_an_error_for_logs_but_not_for_run(log_file, tmp_path, tiny_model_dir):
    log_file.parent.mkdir()
    log_file.write_bytes(b"garbage " * 200)
    listed = invoke("logs")
    assert listed.exit_code == 2 and "not a usable run log" in listed.output
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(_stack(tiny_model_dir)))
    ran = invoke("run", "--stack", str(stack), "--json", "Two plus two?")
    assert ran.exit_code == 0, ran.output
    assert "note: not logging to" in ran.stderr and json.loads(ran.stdout.splitlines()[-1])["answer"] is not None


def _stack(model_dir) -> dict:
    return {
        "name": "tiny",
        "base_model": str(model_dir),
        "stages": [
            {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 3}},
            {"name": "answer", "instruction": "A.", "sees": ["prompt", "intent"], "generation": {"max_new_tokens": 3}},
        ],
    }


def test_run_and_generate_are_logged_unless_told_not_to(log_file, tmp_path, tiny_model_dir):
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(_stack(tiny_model_dir)))
    ran = invoke("run", "--stack", str(stack), "--json", "What is the capital of France?")
    assert ran.exit_code == 0, ran.output
    answer = json.loads(ran.stdout.splitlines()[-1])["answer"]
    assert invoke("run", "--stack", str(stack), "--no-log", "Not logged?").exit_code == 0
    made = invoke("generate", "--model", str(tiny_model_dir), "-n", "3", "--json", "Two plus two?")
    assert made.exit_code == 0, made.output
    assert invoke("generate", "--model", str(tiny_model_dir), "-n", "3", "--no-log", "Not logged?").exit_code == 0
    failed = invoke("run", "--stack", str(stack), "fox " * 3000)
    assert failed.exit_code == 2
    runs = lines_of(invoke("logs", "--json").stdout)
    assert [(r["kind"], r["prompt"][:20]) for r in runs] == [
        ("run", ("fox " * 5)[:20]),
        ("generate", "Two plus two?"),
        ("run", "What is the capital "),
    ]
    assert runs[2]["answer"] == answer and runs[2]["stack"] == "tiny" and runs[2]["stages"] == 2
    assert runs[0]["error"].startswith("InputError") and "max_prompt_tokens" in runs[0]["error"]
    shown = invoke("logs", "show", str(runs[1]["id"]))
    assert shown.exit_code == 0 and "1. greedy" in shown.stdout
