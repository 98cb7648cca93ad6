import copy
import dataclasses

import pytest
from stages.counting import Counting

from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.stack import Stack, generation_params, stage_messages

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


PROMPTS = ["What is the capital of France?", "Two plus two?", "Which planet is largest? Think."]


def test_a_graph_listed_out_of_order_gives_the_chain_output(stack):
    """The list order is only the trace order when it is a valid order; the outputs are the chain's, greedy."""
    shuffled = dict(CFG, stages=[CFG["stages"][2], CFG["stages"][0], CFG["stages"][1]])
    graph = Stack(parse_stack_config(shuffled), stack.engine)
    assert graph.config.trace_order == ["intent", "facts", "answer"]
    chain, out_of_order = stack.run_batch(PROMPTS), graph.run_batch(PROMPTS)
    strip = lambda r: [{k: v for k, v in rec.items() if k != "seconds"} for rec in r.to_dict()["trace"]]  # noqa: E731
    assert [strip(r) for r in out_of_order] == [strip(r) for r in chain]
    assert [r.answer for r in out_of_order] == [r.answer for r in chain]
    assert all(r.answer_stage == "answer" and r.to_dict()["answer_stage"] == "answer" for r in chain)


def test_independent_stages_run_in_one_wave_and_one_batched_call(tiny_engine):
    cfg = {
        "name": "wide",
        "base_model": "tiny",
        "stages": [
            {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 6}},
            {"name": "facts", "instruction": "Facts.", "generation": {"max_new_tokens": 6}},
            {"name": "steps", "instruction": "Steps.", "generation": {"max_new_tokens": 4}},
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "intent", "facts", "steps"],
                "generation": {"max_new_tokens": 6},
            },
        ],
    }
    engine = Counting(tiny_engine)
    stack = Stack(parse_stack_config(cfg), engine)
    assert stack.config.waves() == [["intent", "facts", "steps"], ["answer"]]
    results = stack.run_batch(PROMPTS)
    # the three stages of the first wave share one call (steps decodes fewer tokens in it); then the answer stage
    assert engine.calls == [("mixed", 9, None), ("generate", 3, None)]
    for result in results:
        assert [r.stage for r in result.trace] == ["intent", "facts", "steps", "answer"]
        for rec in result.trace:  # batched output == each input alone (greedy)
            params = generation_params(stack.config.stage(rec.stage))
            assert tiny_engine.generate([rec.input], params)[0].text == rec.output
            assert rec.kind == "generate" and rec.model == tiny_engine.model_ref and rec.skipped is None


def test_parallel_stages_under_different_adapters_share_one_batch_and_the_stage_cache(
    tiny_model_dir, tiny_adapters, tmp_path
):
    from fslm.engine import load_engine
    from fslm.stack_cache import StageCache

    cfg = {
        "name": "branches",
        "base_model": "tiny",
        "stages": [
            {"name": "intent", "instruction": "Restate.", "adapter": str(tiny_adapters["intent"])},
            {"name": "facts", "instruction": "Facts.", "adapter": str(tiny_adapters["answer"])},
            {"name": "plain", "instruction": "Facts.", "generation": {"max_new_tokens": 5}},
            {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "intent", "facts", "plain"]},
        ],
    }
    inner = load_engine(str(tiny_model_dir))
    engine = Counting(inner)
    with StageCache(tmp_path / "stages.sqlite") as cache:
        stack = Stack(parse_stack_config(cfg), engine, cache=cache)
        first = stack.run_batch(PROMPTS)
        assert engine.calls == [("mixed", 9, None), ("generate", 3, None)]
        for result in first:  # each row as its stage alone, under its own adapter
            for rec in result.trace:
                params = generation_params(stack.config.stage(rec.stage))
                assert inner.generate([rec.input], params, adapter=rec.adapter)[0].text == rec.output
        assert [r.adapter for r in first[0].trace] == ["intent", "facts", None, None]
        # facts and plain see the same input with the same instruction: only the adapter (and length) tell them apart
        assert first[0].trace[1].input == first[0].trace[2].input
        engine.calls.clear()
        again = stack.run_batch(PROMPTS)  # every stage output comes from the cache, keyed per stage's adapter
        assert engine.calls == []
        assert [[r.output for r in x.trace] for x in again] == [[r.output for r in x.trace] for x in first]


def test_partial_runs_stop_before_the_excluded_stage_and_its_readers(stack):
    result = stack.run_batch(["Two plus two?"], exclude=("facts",))[0]
    assert [r.stage for r in result.trace] == ["intent"] and result.answer == "" and result.answer_stage is None


def test_each_stage_model_is_loaded_once_and_gets_its_adapters(tiny_model_dir, tiny_adapters, monkeypatch):
    import fslm.engine
    from fslm.engine import load_engine

    loads = []

    def fake_load(ref, *, dtype="float32", backend="hf", **kwargs):
        loads.append((ref, dtype, backend))
        return Counting(load_engine(str(tiny_model_dir)), model_ref=ref)

    monkeypatch.setattr(fslm.engine, "load_engine", fake_load)  # what fslm.stages.endpoint_config calls
    data = copy.deepcopy(CFG)
    data["stages"][0].update(model="other", adapter=str(tiny_adapters["intent"]))
    data["stages"][1]["model"] = "other"
    base = Counting(load_engine(str(tiny_model_dir)), model_ref="tiny")
    stack = Stack(parse_stack_config(data), base, backend="hf")
    assert loads == [("other", "float32", "hf")]  # once, shared by intent and facts
    assert set(stack.engines) == {"tiny", "other"} and stack.engine is base
    assert stack.engines["other"].adapters() == ["intent"] and base.adapters() == []
    result = stack.run("Two plus two?")
    assert [r.model for r in result.trace] == ["other", "other", "tiny"]
    assert [c[0] for c in stack.engines["other"].calls] == ["generate", "generate"] and len(base.calls) == 1
    described = stack.describe_models()
    assert described["other"]["stages"] == ["intent", "facts"] and described["tiny"]["stages"] == ["answer"]
    assert described["tiny"]["params"] == base.params > 0


def test_graph_run_equals_the_stage_by_stage_chain(stack):
    """The reference: each stage in list order, one prompt at a time, reading the texts before it."""
    for prompt, result in zip(PROMPTS, stack.run_batch(PROMPTS), strict=True):
        outputs: dict[str, str] = {}
        for index, stage in enumerate(stack.config.stages):
            text = stack.stage_input(index, prompt, outputs)
            outputs[stage.name] = stack.engine.generate([text], generation_params(stage))[0].text
        assert result.outputs == outputs and result.answer == outputs["answer"]


def test_on_record_passes_each_record_on_as_soon_as_it_exists_in_trace_order(tiny_engine):
    """A live viewer gets a stage's record before any later stage runs, and the records it gets are the trace's."""
    engine = Counting(tiny_engine)
    stack = Stack(parse_stack_config(CFG), engine)
    seen: list[tuple[int, str, int]] = []  # (prompt, stage, engine calls made when the record arrived)
    results = stack.run_batch(PROMPTS, on_record=lambda i, rec: seen.append((i, rec.stage, len(engine.calls))))
    for i, result in enumerate(results):
        mine = [(stage, calls) for j, stage, calls in seen if j == i]
        assert [stage for stage, _ in mine] == [r.stage for r in result.trace] == ["intent", "facts", "answer"]
        assert [calls for _, calls in mine] == [1, 2, 3]  # intent's record arrived before facts was generated


def test_on_record_in_a_partial_run_passes_on_exactly_the_trace(tiny_engine):
    """Listed out of order, run partially: the records passed on are the trace's, in trace order."""
    shuffled = dict(CFG, stages=[CFG["stages"][2], CFG["stages"][0], CFG["stages"][1]])
    graph = Stack(parse_stack_config(shuffled), tiny_engine)
    seen: list[tuple[int, str]] = []
    results = graph.run_batch(PROMPTS, exclude={"answer"}, on_record=lambda i, rec: seen.append((i, rec.stage)))
    assert sorted(seen) == sorted((i, r.stage) for i, res in enumerate(results) for r in res.trace)
    assert [stage for i, stage in seen if i == 0] == ["intent", "facts"]


def test_with_generation_is_a_view_that_decodes_only_the_named_stage_differently(stack):
    answer = stack.config.stage("answer")
    capped = stack.with_generation({"answer": dataclasses.replace(stack.params_for(answer), max_new_tokens=2)})
    assert capped.config is stack.config and capped.engines is stack.engines  # nothing copied, nothing loaded
    full, short = stack.run(PROMPTS[0]), capped.run(PROMPTS[0])
    assert [r.output for r in short.trace[:2]] == [r.output for r in full.trace[:2]]
    assert short.trace[2].tokens_out <= 2 < full.trace[2].tokens_out
    assert stack.generation == {} and stack.params_for(answer) == generation_params(answer)  # the original is untouched
