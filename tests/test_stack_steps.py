"""Stack runs in steps: runs at different stages share one engine call per round, and give what each gives alone."""

from __future__ import annotations

import dataclasses

import pytest
from stages.counting import Counting

from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.stack import Stack
from fslm.stack_steps import StageWork, Together, drive, generate_work

CHAIN = {
    "name": "chain",
    "base_model": "tiny",
    "stages": [
        {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 6}},
        {"name": "facts", "instruction": "Facts.", "sees": ["prompt", "intent"], "generation": {"max_new_tokens": 5}},
        {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"], "generation": {"max_new_tokens": 7}},
    ],
}


def traces(results):
    return [[(r.stage, r.input, r.output, r.tokens_in, r.tokens_out) for r in res.trace] for res in results]


@pytest.fixture()
def chain(tiny_model_dir, tiny_adapters):
    from fslm.engine import load_engine

    cfg = dict(CHAIN, stages=[dict(s) for s in CHAIN["stages"]])
    cfg["stages"][0]["adapter"] = str(tiny_adapters["intent"])
    cfg["stages"][2]["adapter"] = str(tiny_adapters["answer"])
    inner = load_engine(str(tiny_model_dir))
    return Stack(parse_stack_config(cfg), Counting(inner))


def test_runs_started_a_stage_apart_share_each_round_and_match_their_runs_alone(chain):
    alone_a = chain.run_batch(["What is the capital of France?", "Two plus two?"])
    alone_b = chain.run_batch(["Which planet is largest?"])
    engine = chain.engine
    engine.calls.clear()

    finished: dict[str, list] = {}
    together = Together()
    together.add(
        chain.run_steps(["What is the capital of France?", "Two plus two?"]), lambda v, e: finished.update(a=v)
    )
    together.step()  # a: intent
    together.add(chain.run_steps(["Which planet is largest?"]), lambda v, e: finished.update(b=v))
    while len(together):
        together.step()
    # a's facts + b's intent, then a's answer + b's facts, then b's answer: stages of two runs in one call per round
    assert engine.calls == [
        ("generate", 2, "intent"),
        ("mixed", 3, None),
        ("mixed", 3, None),
        ("generate", 1, "answer"),
    ]
    assert traces(finished["a"]) == traces(alone_a)
    assert traces(finished["b"]) == traces(alone_b)
    assert [r.answer for r in finished["a"]] == [r.answer for r in alone_a]


def test_run_batch_is_its_steps_driven_alone(chain):
    prompts = ["What is the capital of France?", "Two plus two?"]
    assert traces(drive(chain.run_steps(prompts))) == traces(chain.run_batch(prompts))


def test_a_view_keeps_its_own_settings_inside_a_shared_round(chain):
    """A with_generation view (a request's cap) batched with the plain stack: each row decodes under its own."""
    params = chain.params_for(chain.config.stage("answer"))
    short = chain.with_generation({"answer": dataclasses.replace(params, max_new_tokens=2)})
    prompt = "Which planet is largest?"
    made = generate_work(
        [
            StageWork(chain, chain.config.stage("answer"), [prompt]),
            StageWork(short, chain.config.stage("answer"), [prompt]),
        ]
    )
    assert made[0][0].tokens_out > 2 >= made[1][0].tokens_out
    assert made[0][0].text.startswith(made[1][0].text)


def test_a_failing_run_gets_its_error_and_the_others_go_on(chain):
    class Failing:
        """Wraps an engine; refuses any row containing 'poison' (as a too-long input would be)."""

        def __init__(self, engine):
            self._engine = engine

        def __getattr__(self, name):
            return getattr(self._engine, name)

        def generate(self, texts, params, adapter=None):
            if any("poison" in t for t in texts):
                raise InputError("poisoned row")
            return self._engine.generate(texts, params, adapter=adapter)

        def generate_mixed(self, rows):
            if any("poison" in text for text, _, _ in rows):
                raise InputError("poisoned row")
            return self._engine.generate_mixed(rows)

    failing = Stack(chain.config, Failing(chain.engine))
    outcomes: dict[str, tuple] = {}
    together = Together()
    together.add(failing.run_steps(["Two plus two?"]), lambda v, e: outcomes.update(good=(v, e)))
    together.add(failing.run_steps(["poison pill"]), lambda v, e: outcomes.update(bad=(v, e)))
    while len(together):
        together.step()
    assert isinstance(outcomes["bad"][1], InputError) and outcomes["bad"][0] is None
    good, error = outcomes["good"]
    assert error is None and traces(good) == traces(chain.run_batch(["Two plus two?"]))


def test_an_error_before_the_first_step_reaches_the_callback(chain):
    outcomes = []
    together = Together()
    together.add(chain.run_steps(["   "]), lambda v, e: outcomes.append((v, e)))
    assert len(together) == 0 and outcomes[0][0] is None and isinstance(outcomes[0][1], InputError)
