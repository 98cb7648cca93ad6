"""/health, /metrics, the API key, trace history (+ SQLite), the viewer page and the CLI's option errors."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from fslm.cli import app as cli_app
from fslm.serve import ServeSettings, create_app

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def ask(client, prompt: str, headers=None):
    return client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}]}, headers=headers
    )


def samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_health_is_open_everything_else_needs_the_key(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings(api_key=KEY))) as client:
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["auth"] is True
        assert [s["name"] for s in health.json()["stages"]] == ["intent", "facts", "answer"]
        for method, path in [
            ("GET", "/metrics"),
            ("GET", "/v1/models"),
            ("GET", "/v1/traces"),
            ("POST", "/v1/chat/completions"),
        ]:
            for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
                resp = client.request(method, path, headers=headers)
                assert resp.status_code == 401, (path, headers)
                assert resp.json()["error"]["code"] == "invalid_api_key"
        assert ask(client, "Two plus two?", AUTH).status_code == 200
        assert client.get("/metrics", headers=AUTH).status_code == 200


def test_api_key_from_environment(tiny_stack, monkeypatch):
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_API_KEY", "from-env")
    reset_settings()
    with TestClient(create_app(tiny_stack, ServeSettings())) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_metrics_count_requests_tokens_and_latency(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings())) as client:
        answers = [ask(client, p).json() for p in ["Two plus two?", "Which planet is largest?"]]
        client.get("/v1/models")
        resp = client.get("/metrics")
        assert resp.headers["content-type"].startswith("text/plain")
        m = samples(resp.text)
        assert m["fslm_requests_total{route=/v1/chat/completions,status=200}"] == 2
        assert m["fslm_requests_total{route=/v1/models,status=200}"] == 1
        assert m["fslm_batch_size_count"] == 2 and m["fslm_request_latency_seconds_count"] == 2
        assert m["fslm_generated_tokens_total"] == sum(a["usage"]["completion_tokens"] for a in answers)
        assert m["fslm_stage_input_tokens_total"] == sum(a["usage"]["prompt_tokens"] for a in answers)
        assert m["fslm_queue_depth"] == 0 and m["fslm_tokens_per_second"] > 0
        assert m["fslm_queue_wait_seconds_count"] == 2


def test_trace_history_is_bounded_and_browsable(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings(trace_history=2, log=False))) as client:  # memory only
        ids = [ask(client, p).json()["id"] for p in ["one?", "two?", "three?"]]
        listed = client.get("/v1/traces").json()
        assert [t["id"] for t in listed["data"]] == [ids[2], ids[1]]  # newest first, only the last 2 kept
        assert listed["persistent"] is False
        full = client.get(f"/v1/traces/{ids[2]}").json()
        assert full["prompt"] == "three?" and [s["stage"] for s in full["stages"]] == ["intent", "facts", "answer"]
        assert client.get(f"/v1/traces/{ids[0]}").status_code == 404
        assert client.get("/v1/traces", params={"limit": 1}).json()["data"][0]["id"] == ids[2]


def test_deprecated_persist_traces_still_switches_the_run_log(tiny_stack, tmp_path):
    db = tmp_path / "traces.sqlite"
    with TestClient(create_app(tiny_stack, ServeSettings(persist_traces=False, trace_db=db))) as client:
        ask(client, "not kept?")
    assert not db.exists()
    with TestClient(create_app(tiny_stack, ServeSettings(persist_traces=True, trace_db=db))) as client:
        kept = ask(client, "kept?").json()["id"]
    with TestClient(create_app(tiny_stack, ServeSettings(persist_traces=True, trace_db=db))) as client:  # a restart
        assert [t["id"] for t in client.get("/v1/traces").json()["data"]] == [kept]
        assert client.get(f"/v1/traces/{kept}").json()["answer"] is not None


def test_viewer_page_is_self_contained(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings(api_key=KEY))) as client:
        page = client.get("/ui")  # no key needed: the page holds no data and asks for the key
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert "/v1/chat/completions" in html and "/v1/traces" in html
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the viewer must not load anything external"
        assert "@import" not in html and "fonts.googleapis" not in html
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui"


@pytest.mark.parametrize("args", [["--max-batch", "0"], ["--queue-size", "0"], ["--port", "70000"]])
def test_cli_rejects_bad_options_before_loading_a_model(args):
    result = CliRunner().invoke(cli_app, ["serve", *args])
    assert result.exit_code == 2
    assert "invalid serve option" in result.output and args[0] in result.output
