"""`fslm serve` writes every request to the run log, and /v1/traces pages and searches that log."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

import fslm.logs.recording as logrecord
from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.logs import RunLog, get_run, list_runs, log_path, record, stack_entry
from fslm.serve import ServeSettings, create_app
from fslm.settings import reset_settings
from fslm.stack import Stack

from .conftest import TINY_STACK


def ask(client, prompt: str):
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}]})


def cli_run(prompt: str, answer: str) -> int:
    """A run as `fslm run` logs it (written directly: no second model run needed)."""
    ident = {"stack": "other", "config_sha256": None, "adapters": {}, "engine": {"model_ref": "m", "dtype": "f"}}
    e = stack_entry("run", prompt, ident, started=time.time(), wall_seconds=1.5)
    e["answer"] = answer
    e["trace"] = [
        {
            "stage": "answer",
            "input": "in",
            "output": answer,
            "tokens_in": 5,
            "tokens_out": 2,
            "seconds": 1.2,
            "adapter": None,
            "finish_reason": "stop",
        }
    ]
    return record(e)


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch):
    monkeypatch.setattr(logrecord, "_noted", set())


def test_every_request_is_logged_with_its_trace_and_identity(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings())) as client:
        reply = ask(client, "Which planet is largest?").json()
        listed = client.get("/v1/traces").json()
    assert listed["persistent"] is True and listed["has_more"] is False
    [run] = list_runs()
    logged = get_run(reply["id"])  # found by completion id as well as by log id
    assert logged["id"] == run["id"] and listed["data"][0]["log_id"] == run["id"]
    assert logged["kind"] == "serve" and logged["request_id"] == reply["id"]
    assert logged["answer"] == reply["choices"][0]["message"]["content"]
    assert [s["stage"] for s in logged["trace"]] == ["intent", "facts", "answer"]
    assert logged["trace"] == reply["fslm_trace"]["stages"]
    assert logged["stack"] == "tiny" and len(logged["config_sha256"]) == 64
    assert logged["engine"]["model_ref"] == tiny_stack.engine.model_ref and logged["engine"]["dtype"] == "float32"
    details = logged["details"]
    assert details["served_as"] == "tiny" and details["batch_size"] == 1 and details["finish_reason"]
    assert logged["wall_seconds"] == reply["fslm_trace"]["latency_seconds"]


def test_traces_page_and_search_the_whole_log(tiny_stack):
    for i in range(5):
        cli_run(f"question {i} about topic{i}", f"answer {i}")
    with TestClient(create_app(tiny_stack, ServeSettings())) as client:
        served = ask(client, "Which planet is largest?").json()["id"]
        first = client.get("/v1/traces", params={"limit": 4}).json()
        assert [t["id"] for t in first["data"]][:2] == [served, str(first["data"][1]["log_id"])]
        assert first["has_more"] is True and [t["kind"] for t in first["data"]] == ["serve", "run", "run", "run"]
        rest = client.get("/v1/traces", params={"limit": 4, "offset": 4}).json()
        assert len(rest["data"]) == 2 and rest["has_more"] is False
        assert [t["prompt"] for t in rest["data"]] == ["question 1 about topic1", "question 0 about topic0"]
        found = client.get("/v1/traces", params={"q": "topic3"}).json()["data"]
        assert [t["prompt"] for t in found] == ["question 3 about topic3"]
        assert client.get("/v1/traces", params={"q": "planet"}).json()["data"][0]["id"] == served
        assert client.get("/v1/traces", params={"q": 'zzz "( AND'}).json()["data"] == []
        # a run from the CLI opens like a served one (the viewer draws it)
        full = client.get(f"/v1/traces/{found[0]['id']}").json()
        assert full["kind"] == "run" and full["stages"][0]["output"] == "answer 3" and full["model"] == "other"
        assert full["latency_seconds"] == 1.5 and full["batch_size"] == 1 and full["finish_reason"] == "stop"
        for bad in ({"offset": -1}, {"offset": "x"}, {"q": "x" * 1001}):
            assert client.get("/v1/traces", params=bad).status_code == 400


def test_no_log_keeps_the_old_memory_only_history(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings(log=False, trace_history=3))) as client:
        ids = [ask(client, p).json()["id"] for p in ("one fish?", "two fish?", "xylophone fish?")]
        assert [t["id"] for t in client.get("/v1/traces", params={"q": "fish"}).json()["data"]] == ids[::-1]
        paged = client.get("/v1/traces", params={"limit": 1, "offset": 1}).json()
        assert [t["id"] for t in paged["data"]] == [ids[1]] and paged["has_more"] is True
        assert [t["id"] for t in client.get("/v1/traces", params={"q": "xylophone"}).json()["data"]] == [ids[2]]
    assert not log_path().exists()


def test_the_old_environment_switch_still_turns_the_server_log_off(tiny_stack, monkeypatch):
    monkeypatch.setenv("FSLM_LOG_TRACES", "0")
    reset_settings()
    with TestClient(create_app(tiny_stack, ServeSettings())) as client:
        assert ask(client, "Two plus two?").status_code == 200
        assert client.get("/v1/traces").json()["persistent"] is False
    assert not log_path().exists()


class FailingEngine:
    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, texts, params, adapter=None):
        raise InputError("the engine refused this input")


def test_a_failed_request_is_logged_with_its_error(tiny_engine):
    stack = Stack(parse_stack_config(TINY_STACK), FailingEngine(tiny_engine))
    with TestClient(create_app(stack, ServeSettings())) as client:
        resp = ask(client, "Two plus two?")
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_input"
        [listed] = client.get("/v1/traces").json()["data"]
    assert listed["error"] == "invalid_input: the engine refused this input" and listed["answer"] == ""
    [run] = list_runs()
    assert run["kind"] == "serve" and run["request_id"].startswith("chatcmpl-") and run["prompt"] == "Two plus two?"


def test_a_broken_log_never_fails_a_request(tiny_stack, capsys):
    path = log_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not sqlite " * 100)
    with TestClient(create_app(tiny_stack, ServeSettings())) as client:
        replies = [ask(client, p) for p in ("Two plus two?", "Which planet is largest?")]
        assert [r.status_code for r in replies] == [200, 200]
        listed = client.get("/v1/traces").json()["data"]  # what memory holds
        assert [t["id"] for t in listed] == [r.json()["id"] for r in replies[::-1]]
        assert client.get(f"/v1/traces/{listed[0]['id']}").status_code == 200
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "not an SQLite database" in notes[0]


def test_restarted_server_lists_what_the_log_kept(tiny_stack, tmp_path):
    db = tmp_path / "serve.db"
    with TestClient(create_app(tiny_stack, ServeSettings(log_db=db))) as client:
        kept = ask(client, "kept?").json()["id"]
    cli_run("from the command line", "yes")
    assert RunLog().count() == 1  # the default log; the server wrote to its own file
    with TestClient(create_app(tiny_stack, ServeSettings(log_db=db))) as client:
        assert [t["id"] for t in client.get("/v1/traces").json()["data"]] == [kept]
        assert client.get(f"/v1/traces/{kept}").json()["stages"][0]["stage"] == "intent"


def test_the_log_switch_and_path_resolve_with_their_old_names(monkeypatch, tmp_path):
    assert ServeSettings().resolved_log() is True and ServeSettings().resolved_log_db() == log_path()
    assert ServeSettings(log=False).resolved_log() is False
    assert ServeSettings(persist_traces=False).resolved_log() is False
    assert ServeSettings(log=True, persist_traces=False).resolved_log() is True  # the new name wins
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    assert ServeSettings(trace_db=old).resolved_log_db() == old
    assert ServeSettings(log_db=new, trace_db=old).resolved_log_db() == new
    monkeypatch.setenv("FSLM_LOG", "0")
    reset_settings()
    assert ServeSettings().resolved_log() is False


def test_serve_cli_takes_no_log_and_notes_the_deprecated_flag():
    from typer.testing import CliRunner

    from fslm.cli import app

    old = CliRunner().invoke(app, ["serve", "--no-persist-traces", "--max-batch", "0"])  # refused before any load
    assert old.exit_code == 2 and "deprecated" in old.output and "--max-batch" in old.output
    new = CliRunner().invoke(app, ["serve", "--no-log", "--max-batch", "0"])
    assert new.exit_code == 2 and "deprecated" not in new.output and "--max-batch" in new.output
