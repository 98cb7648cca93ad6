"""A real local OpenAI-style server that injects 500s, slow answers and dropped connections: distill still ends with
every record exactly once. Non-retryable errors and exhausted retries fail clearly (exit code 2)."""

from __future__ import annotations

import pytest
from live_server import running_server
from typer.testing import CliRunner

from fslm.cli import app
from fslm.distill import distill
from fslm.errors import FslmError
from fslm.tasks.instructions import load_instructions
from fslm.teachers import HTTPTeacher, TeacherError

from .conftest import read_lines
from .fake_teacher import FaultyTeacher


def test_faults_are_retried_and_every_record_lands_exactly_once(stack_file, alpaca_file, tmp_path):
    server = FaultyTeacher(slow_seconds=1.5)
    out = tmp_path / "d.jsonl"
    with running_server(server.app, path="/v1") as url:
        teacher = HTTPTeacher(url, "fake-teacher", concurrency=4, timeout=0.5, attempts=6, max_backoff=0.1)
        report = distill(stack_file, alpaca_file, out, teacher=teacher)
    items, _ = load_instructions(alpaca_file)
    lines = read_lines(out)
    assert sorted(r["id"] for r in lines) == sorted(i.id for i in items)  # all of them, none twice
    assert report.kept == len(items) == report.written and report.filtered == {}
    assert server.injected["500"] > 0 and server.injected["slow"] > 0 and server.injected["drop"] > 0
    assert teacher.retries == sum(server.injected.values()) == report.retries
    assert set(server.served.values()) == {1}  # each distinct request was answered successfully exactly once
    # the hint reaches the teacher: every hinted intent request contains its gold output
    bodies = [b for b in server.bodies if b["messages"][0]["content"] == "Restate."]
    golds = {i.prompt: i.gold for i in items}
    for body in bodies:
        prompt = body["messages"][1]["content"].split("\n")[0].removeprefix("Request: ")
        if golds.get(prompt):
            assert f"Response: {golds[prompt]}" in body["messages"][1]["content"]
    assert all(b["model"] == "fake-teacher" and b["max_tokens"] == 8 for b in bodies)
    for rec in lines:
        assert rec["teacher"].startswith("http:fake-teacher@") and rec["targets"]["intent"].startswith("fact ")


def test_cli_uses_the_api_key_from_the_named_env_var(stack_file, alpaca_file, tmp_path, monkeypatch):
    server = FaultyTeacher(slow_seconds=0.0, api_key="sekrit")
    monkeypatch.setenv("MY_TEACHER_KEY", "sekrit")
    with running_server(server.app, path="/v1") as url:
        base = [
            "distill",
            "--stack",
            str(stack_file),
            "--data",
            str(alpaca_file),
            "--teacher-url",
            url,
            "--teacher-model",
            "m",
        ]
        ok = CliRunner().invoke(
            app, base + ["--out", str(tmp_path / "a.jsonl"), "--api-key-env", "MY_TEACHER_KEY", "--limit", "3"]
        )
        assert ok.exit_code == 0, ok.output
        assert len(read_lines(tmp_path / "a.jsonl")) == 3 and "kept" in ok.output
        denied = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b.jsonl")])
        assert denied.exit_code == 2 and "HTTP 401" in denied.output and "Traceback" not in denied.output
        missing = CliRunner().invoke(
            app, base + ["--out", str(tmp_path / "c.jsonl"), "--api-key-env", "NOT_SET_ANYWHERE"]
        )
        assert missing.exit_code == 2 and "NOT_SET_ANYWHERE" in missing.output


def test_exhausted_retries_raise_a_clear_error_and_keep_nothing_partial(stack_file, alpaca_file, tmp_path):
    server = FaultyTeacher(status=503)
    out = tmp_path / "d.jsonl"
    with running_server(server.app, path="/v1") as url:
        teacher = HTTPTeacher(url, "m", attempts=3, max_backoff=0.05)
        with pytest.raises(TeacherError, match="still failing after 3 attempts") as err:
            distill(stack_file, alpaca_file, out, teacher=teacher)
    assert isinstance(err.value, FslmError) and "rerun the same command to resume" in str(err.value)
    assert out.read_text() == ""


def test_bad_teacher_options_are_config_errors():
    with pytest.raises(FslmError, match="must start with http"):
        HTTPTeacher("127.0.0.1:8000", "m")
    from fslm.teachers import make_teacher

    with pytest.raises(FslmError, match="--teacher-model"):
        make_teacher(url="http://127.0.0.1:1/v1")
