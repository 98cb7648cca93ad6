"""Score and tool stages and `when:` branches, run on the tiny model."""

from __future__ import annotations

import copy

import pytest

from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.stack import Stack

from .counting import Counting

MC = "Which gas do plants take in?\n\nOptions:\nA. oxygen\nB. carbon dioxide\nC. helium"
FREE = "Tom has 48 apples and gives away 48 / 2 of them. How many are left? 48 - 24"

BRANCHED = {
    "name": "branched",
    "base_model": "tiny",
    "stages": [
        {"name": "facts", "instruction": "Facts.", "generation": {"max_new_tokens": 5}},
        {
            "name": "pick",
            "instruction": "Answer.",
            "sees": ["prompt", "facts"],
            "score": {"format": "chat"},
            "when": "has_options",
            "final": True,
        },
        {"name": "calc", "sees": ["prompt"], "tool": {}, "when": "no_options"},
        {
            "name": "answer",
            "instruction": "Answer.",
            "sees": ["prompt", "facts", "calc"],
            "final": True,
            "generation": {"max_new_tokens": 6},
        },
    ],
}


@pytest.fixture()
def branched(tiny_engine):
    return Stack(parse_stack_config(BRANCHED), tiny_engine)


def test_a_prompt_with_options_is_scored_and_the_free_branch_skipped(branched, tiny_engine):
    result = branched.run(MC)
    assert [r.stage for r in result.trace] == ["facts", "pick", "calc", "answer"]
    facts, pick, calc, answer = result.trace
    assert (
        pick.kind == "score" and pick.options == ("oxygen", "carbon dioxide", "helium") and pick.when == "has_options"
    )
    direct = tiny_engine.score([pick.input] * 3, list(pick.options))
    assert pick.option_scores == pytest.approx(tuple(s.logprob for s in direct), abs=1e-4)
    assert pick.output == pick.options[pick.choice] and pick.choice == max(range(3), key=lambda i: direct[i].logprob)
    top, second = sorted(pick.option_scores, reverse=True)[:2]
    assert pick.margin == pytest.approx(top - second) and pick.margin >= 0
    assert pick.input == branched.stage_input(1, MC, {"facts": facts.output})  # its rendered chat input
    assert pick.tokens_out == 0 and pick.tokens_in == tiny_engine.count_tokens(pick.input) + sum(pick.option_tokens)
    assert calc.skipped == "when: no_options, and the prompt has options"
    assert answer.skipped == "sees 'calc', which was skipped"
    for rec in (calc, answer):  # a skipped stage costs nothing and hands on no text
        assert (rec.tokens_in, rec.tokens_out, rec.seconds, rec.output) == (0, 0, 0.0, "")
        assert rec.stage not in result.outputs
    assert result.answer == pick.output and result.answer_stage == "pick"
    data = result.to_dict()
    assert data["answer_stage"] == "pick" and data["trace"][2]["skipped"] and data["trace"][1]["option_scores"]


def test_a_free_prompt_runs_the_calculator_then_the_answer(branched):
    result = branched.run(FREE)
    facts, pick, calc, answer = result.trace
    assert pick.skipped == "when: has_options, and the prompt has no options" and pick.option_scores == ()
    assert calc.kind == "tool" and calc.output == "48 / 2 = 24\n48 - 24 = 24" and calc.errors == ()
    assert calc.input == f"Question: {FREE}" and calc.model is None and calc.tokens_in == 0
    assert "Calc: 48 / 2 = 24\n48 - 24 = 24" in answer.input and answer.when is None
    assert result.answer == answer.output and result.answer_stage == "answer"


def test_a_batch_mixes_both_kinds_of_prompt(branched, tiny_engine):
    engine = Counting(tiny_engine)
    stack = Stack(parse_stack_config(BRANCHED), engine)
    batch = stack.run_batch([MC, FREE, MC])
    assert [r.answer_stage for r in batch] == ["pick", "answer", "pick"]
    # facts for all 3 prompts, then in wave 2 one score call (2 prompts x 3 options) and one generate call (1 prompt)
    assert engine.calls == [("generate", 3, None), ("score", 6, None), ("generate", 1, None)]
    alone = [branched.run(p) for p in (MC, FREE, MC)]
    assert [r.answer for r in batch] == [r.answer for r in alone]


def test_score_without_options_is_a_clear_error_unless_when_allows(tiny_engine):
    data = copy.deepcopy(BRANCHED)
    del data["stages"][1]["when"]
    stack = Stack(parse_stack_config(data), tiny_engine)
    with pytest.raises(InputError, match=r"stage 'pick' .* picks among the prompt's options, but prompt 1 has none"):
        stack.run(FREE)


def test_raw_format_scores_lm_eval_contexts_after_the_notes(tiny_engine):
    data = copy.deepcopy(BRANCHED)
    data["stages"][1].update(score={"format": "raw"}, instruction="")
    stack = Stack(parse_stack_config(data), tiny_engine)
    pick = stack.run(MC).trace[1]
    facts = stack.run(MC).outputs["facts"]
    context = f"Facts: {facts.strip()}\n\nQuestion: Which gas do plants take in?\nAnswer:"
    assert pick.input == context
    direct = tiny_engine.score([context] * 3, [" oxygen", " carbon dioxide", " helium"])
    assert pick.option_scores == pytest.approx(tuple(s.logprob for s in direct), abs=1e-4)


def test_a_score_stage_scores_with_its_adapter(tiny_model_dir, tiny_adapters):
    from fslm.engine import load_engine

    data = copy.deepcopy(BRANCHED)
    data["stages"][1]["adapter"] = str(tiny_adapters["answer"])
    engine = load_engine(str(tiny_model_dir))  # its own engine: adapters must not leak into the shared one
    stack = Stack(parse_stack_config(data), engine)
    pick = stack.run(MC).trace[1]
    assert pick.adapter == "pick"
    with_adapter = engine.score([pick.input] * 3, list(pick.options), adapter="pick")
    without = engine.score([pick.input] * 3, list(pick.options))
    assert pick.option_scores == pytest.approx(tuple(s.logprob for s in with_adapter), abs=1e-4)
    assert pick.option_scores != pytest.approx(tuple(s.logprob for s in without), abs=1e-4)


def test_explicit_choices_override_parsing(branched):
    from fslm.stages.score import Choices

    choices = Choices(("yes", "no"), ("yes", "no"), ("Q\nA:",) * 2, (" yes", " no"))
    result = branched.run_batch([FREE], choices=[choices])[0]
    assert result.answer_stage == "pick" and result.trace[1].options == ("yes", "no")
    with pytest.raises(ValueError, match="2 choices for 1 prompts"):
        branched.run_batch([FREE], choices=[None, None])
