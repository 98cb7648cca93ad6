import pytest

from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.stack import Stack, stage_messages

CFG = {
    "name": "tiny",
    "base_model": "tiny",
    "max_prompt_tokens": 64,
    "stages": [
        {"name": "intent", "instruction": "Restate.", "sees": ["prompt"], "generation": {"max_new_tokens": 6}},
        {"name": "facts", "instruction": "Facts.", "sees": ["prompt", "intent"], "generation": {"max_new_tokens": 6}},
        {
            "name": "answer",
            "instruction": "Answer.",
            "sees": ["prompt", "facts"],
            "template": "Q={prompt} F={facts}",
            "generation": {"max_new_tokens": 8},
        },
    ],
}


@pytest.fixture()
def stack(tiny_engine):
    return Stack(parse_stack_config(CFG), tiny_engine)


def test_trace_shows_every_stage_and_passes_plain_text(stack):
    result = stack.run("What is the capital of France?")
    assert [r.stage for r in result.trace] == ["intent", "facts", "answer"]
    intent, facts, answer = result.trace
    assert "What is the capital of France?" in intent.input
    assert intent.output in facts.input  # stages see earlier text verbatim
    assert f"Q=What is the capital of France? F={facts.output}" in answer.input
    assert result.answer == answer.output
    for rec in result.trace:
        assert rec.tokens_in == stack.engine.count_tokens(rec.input)
        assert 0 <= rec.tokens_out <= 8 and rec.seconds >= 0
    data = result.to_dict()
    assert set(data) >= {"answer", "trace"} and set(data["trace"][0]) >= {
        "stage",
        "input",
        "output",
        "tokens_in",
        "tokens_out",
        "seconds",
    }


def test_batch_equals_one_by_one(stack):
    prompts = ["What is the capital of France?", "Two plus two?", "Which planet is largest? Think."]
    batched = stack.run_batch(prompts)
    single = [stack.run(p) for p in prompts]
    assert [r.to_dict()["trace"][i]["output"] for r in batched for i in range(3)] == [
        r.to_dict()["trace"][i]["output"] for r in single for i in range(3)
    ]
    assert [r.answer for r in batched] == [r.answer for r in single]


def test_partial_run_and_answer_input(stack):
    result = stack.run_batch(["Two plus two?"], stages=2)[0]
    assert [r.stage for r in result.trace] == ["intent", "facts"] and result.answer == ""
    assert "F=" + result.outputs["facts"] in stack.answer_input(result)


def test_stage_messages_is_pure_and_uses_labels():
    cfg = parse_stack_config(CFG)
    msgs = stage_messages(cfg, 1, "Why?", {"intent": "The user wants a reason."})
    assert msgs[0] == {"role": "system", "content": "Facts."}
    assert msgs[1]["content"] == "Question: Why?\n\nIntent: The user wants a reason."


def test_braces_in_prompt_are_kept_verbatim(stack):
    result = stack.run_batch(["What is {facts} in {0}?"], stages=1)[0]
    assert "What is {facts} in {0}?" in result.trace[0].input


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(stack, prompt):
    with pytest.raises(InputError, match="empty prompt"):
        stack.run(prompt)


def test_too_long_prompt_is_rejected_not_truncated(stack):
    with pytest.raises(InputError, match="max_prompt_tokens"):
        stack.run("fox " * 200)


def test_adapters_are_activated_per_stage(tiny_model_dir, tiny_adapters, tmp_path):
    import yaml

    from fslm.config import load_stack_config
    from fslm.engine import load_engine

    data = dict(CFG, base_model=str(tiny_model_dir))
    data["stages"] = [dict(s) for s in CFG["stages"]]
    data["stages"][0]["adapter"] = str(tiny_adapters["intent"])
    data["stages"][2]["adapter"] = str(tiny_adapters["answer"])
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    engine = load_engine(str(tiny_model_dir))
    stack = Stack(load_stack_config(path), engine)
    assert sorted(engine.adapters()) == ["answer", "intent"]
    result = stack.run("What is the capital of France?")
    assert [r.adapter for r in result.trace] == ["intent", None, "answer"]
    plain = Stack(parse_stack_config(CFG), load_engine(str(tiny_model_dir))).run("What is the capital of France?")
    assert result.trace[0].output != plain.trace[0].output
