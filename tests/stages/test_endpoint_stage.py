"""Stages on an OpenAI-compatible endpoint: a 2-stage stack with one stage on a real `fslm serve` (tiny model),
a whole stack on a server through `fslm run`, failures as one `error:` line (exit 2), and `endpoint:` validation."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from live_server import Upstream, closed_port_url, running_server
from typer.testing import CliRunner

from fslm.cli import app
from fslm.config import parse_stack_config
from fslm.engine import GenerationParams
from fslm.engine.endpoint import EndpointEngine, parse_messages
from fslm.errors import ConfigError
from fslm.serve import ServeSettings, create_app
from fslm.stack import Stack

runner = CliRunner()
SERVED = {
    "name": "served",
    "base_model": "tiny",
    "max_prompt_tokens": 400,
    "stages": [{"name": "answer", "instruction": "Answer.", "generation": {"max_new_tokens": 8}}],
}
QUESTION = "What is the capital of France?"


def two_stages(base_model: str, endpoint: dict) -> dict:
    return {
        "name": "mixed",
        "base_model": base_model,
        "stages": [
            {"name": "facts", "instruction": "Facts.", "generation": {"max_new_tokens": 6}},
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "facts"],
                "generation": {"max_new_tokens": 8},
                "endpoint": endpoint,
            },
        ],
    }


@pytest.fixture(scope="module")
def served(tiny_engine):
    stack = Stack(parse_stack_config(SERVED), tiny_engine)
    with running_server(create_app(stack, ServeSettings(model_name="tiny-served", log=False)), path="/v1") as url:
        yield url, stack


def test_one_stage_on_the_endpoint_answers_as_the_local_engine(served, tiny_engine, tiny_model_dir):
    url, served_stack = served
    cfg = parse_stack_config(two_stages(str(tiny_model_dir), {"base_url": url, "model": "tiny-served"}))
    stack = Stack(cfg, tiny_engine)
    remote = stack.engine_for(cfg.stage("answer"))
    assert isinstance(remote, EndpointEngine) and stack.engine_for(cfg.stage("facts")) is tiny_engine
    result = stack.run(QUESTION)
    facts, answer = result.trace
    assert facts.model == str(tiny_model_dir) and answer.model == f"tiny-served@{url}"
    messages = parse_messages(answer.input)  # the trace shows exactly what was sent
    assert messages[0] == {"role": "system", "content": "Answer."} and facts.output in messages[1]["content"]
    # the server answers its own one-stage stack on the user message: the same greedy request, run locally
    local = tiny_engine.generate(
        [served_stack.stage_input(0, messages[1]["content"].strip(), {})], GenerationParams(max_new_tokens=8)
    )
    assert result.answer == local[0].text == answer.output and answer.tokens_out == local[0].tokens_out


def test_a_whole_stack_on_the_endpoint_through_the_cli(served, tmp_path):
    url, served_stack = served
    data = {**SERVED, "name": "remote", "base_model": "tiny-served", "endpoint": {"base_url": url}}
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data))
    ok = runner.invoke(app, ["run", "--stack", str(path), "--json", QUESTION])  # no local model anywhere
    assert ok.exit_code == 0, ok.output
    shown = json.loads(ok.output.splitlines()[-1])
    sent = parse_messages(shown["trace"][0]["input"])[-1]["content"]  # the server's prompt: the last user message
    assert shown["answer"] == served_stack.run(sent).answer and shown["trace"][0]["model"] == f"tiny-served@{url}"
    checked = runner.invoke(app, ["stack", "validate", str(path)])
    assert checked.exit_code == 0 and f"endpoint: answer run on {url}" in " ".join(checked.output.split())


def test_a_failing_endpoint_is_one_error_line_and_exit_2(tmp_path):
    with Upstream(lambda body, hit: (500, {"error": "down"})) as up:
        data = {**SERVED, "base_model": "m", "endpoint": {"base_url": up.url, "attempts": 2, "timeout": 2}}
        path = tmp_path / "down.yaml"
        path.write_text(yaml.safe_dump(data))
        result = runner.invoke(app, ["run", "--stack", str(path), QUESTION])
    assert result.exit_code == 2 and up.hits == 2
    text = " ".join(result.output.split())
    assert f"error: endpoint {up.url}/chat/completions still failing after 2 attempts" in text
    assert "Traceback" not in result.output


def test_validate_checks_endpoints_without_the_network(tmp_path):
    url = closed_port_url()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SERVED, "base_model": "served-name", "endpoint": {"base_url": url}}))
    result = runner.invoke(app, ["stack", "validate", str(path)])
    assert result.exit_code == 0, result.output
    for endpoint, problem in [
        ({"base_url": "ftp://host/v1"}, "endpoint.base_url: expected an http:// or https:// URL"),
        ({"base_url": "http:///v1"}, "endpoint.base_url: expected an http(s) URL with a host"),
        ({"base_url": url, "api_key": "sk-1"}, "endpoint.api_key: Extra inputs are not permitted"),
        ({"base_url": url, "api_key_env": "sk-12 34"}, "endpoint.api_key_env: expected the NAME"),
        ({"base_url": url, "timeout": 0}, "endpoint.timeout: Input should be greater than 0"),
        ({"base_url": url, "concurrency": 0}, "endpoint.concurrency: Input should be greater than or equal to 1"),
    ]:
        path.write_text(yaml.safe_dump({**SERVED, "endpoint": endpoint}))
        result = runner.invoke(app, ["stack", "validate", str(path)])
        assert result.exit_code == 2 and problem in " ".join(result.output.split()), (endpoint, result.output)


def test_endpoint_precedence_and_refs():
    url = "http://127.0.0.1:8000/v1"
    data = two_stages("base", {"base_url": "http://gpu:8000/v1/"})
    data["stages"].append({"name": "extra", "instruction": "x", "sees": ["answer"], "model": "other"})
    cfg = parse_stack_config(data)
    refs = [cfg.stage_model(s) for s in cfg.stages]
    assert refs == ["base", "base@http://gpu:8000/v1", "other"] and cfg.models == refs
    cfg = parse_stack_config({**data, "endpoint": {"base_url": url, "model": "served"}})
    assert [cfg.stage_model(s) for s in cfg.stages] == [f"served@{url}", "base@http://gpu:8000/v1", f"served@{url}"]
    assert cfg.base_ref == f"served@{url}" and set(cfg.endpoint_engines()) == set(cfg.models)
    plain = parse_stack_config(SERVED)
    assert "endpoint" not in plain.to_yaml() and "endpoint" not in json.dumps(plain.stages[0].model_dump(mode="json"))


def test_an_endpoint_only_fits_a_model_stage():
    bad = copy.deepcopy(SERVED)
    bad["stages"].insert(0, {"name": "calc", "tool": {}, "endpoint": {"base_url": "http://h/v1"}})
    bad["stages"][1]["sees"] = ["prompt", "calc"]
    with pytest.raises(ConfigError, match="stages.0: endpoint: a tool stage runs no model"):
        parse_stack_config(bad)


def test_a_served_adapter_is_the_stage_name_and_its_outputs_are_cached(tiny_engine, tiny_model_dir, tmp_path):
    from fslm.stack_cache import StageCache

    def answer(body, hit):
        return 200, {"choices": [{"message": {"content": f"served by {body['model']}"}, "finish_reason": "stop"}]}

    with Upstream(answer) as up:
        data = two_stages(str(tiny_model_dir), {"base_url": up.url, "model": "base"})
        data["stages"][1]["adapter"] = "/on/the/server/adapters/answer"  # not on this machine: not checked here
        with StageCache(tmp_path / "cache.db") as cache:
            stack = Stack(parse_stack_config(data), tiny_engine, cache)
            first = stack.run(QUESTION)
            again = stack.run(QUESTION)
            assert cache.hits == 2 and up.hits == 1  # facts and answer both from the cache the second time
    assert first.answer == again.answer == "served by answer" and up.bodies[0]["model"] == "answer"
    assert first.trace[1].adapter == "answer" and stack.engine_for(stack.config.stage("answer")).adapters() == [
        "answer"
    ]


def test_engine_openai_on_the_command_line_runs_a_plain_stack_on_the_server(served, tmp_path, monkeypatch):
    """`--engine openai` (no `endpoint:` block): the base model is a name the server serves, never looked up here."""
    url, served_stack = served
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({**SERVED, "name": "plain", "base_model": "tiny-served"}))
    refused = runner.invoke(app, ["run", "--stack", str(path), QUESTION])  # locally, that name is no model
    assert refused.exit_code == 2 and "tiny-served" in refused.output
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    ok = runner.invoke(app, ["run", "--stack", str(path), "--engine", "openai", "--json", QUESTION])
    assert ok.exit_code == 0, ok.output
    shown = json.loads(ok.output.splitlines()[-1])
    sent = parse_messages(shown["trace"][0]["input"])[-1]["content"]
    assert shown["answer"] == served_stack.run(sent).answer
