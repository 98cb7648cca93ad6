"""The vote stage: majority over normalised drafts, averaged option probabilities over drafts, batching."""

from __future__ import annotations

import copy
import math

import pytest

from fslm.config import parse_stack_config
from fslm.engine import Generation
from fslm.stack import Stack, generation_params
from fslm.stages.vote import majority, normalize

from .counting import Counting

PROMPTS = ["What is the capital of France?", "Two plus two?", "Which planet is largest? Think."]
MC = [
    "Which gas do plants take in?\n\nOptions:\nA. oxygen\nB. carbon dioxide\nC. helium",
    "Which planet is largest?\nA. Mars\nB. Jupiter",
]
PLAIN = {
    "name": "plain",
    "base_model": "tiny",
    "stages": [
        {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 5}},
        {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "intent"], "generation": {"max_new_tokens": 7}},
    ],
}


def voting(**vote):
    data = copy.deepcopy(PLAIN)
    data["stages"][1]["vote"] = vote
    return data


@pytest.mark.parametrize(
    ("drafts", "how", "winner", "votes"),
    [
        (["Paris.", "London", "  paris ", "London", '"Paris"'], "text", 0, 3),
        (["b", "a", "a", "b"], "text", 0, 2),  # a tie: the form seen first wins
        (["x", "y", "z"], "text", 0, 1),
        (["So it is 24.", "24.0 apples", "I think 25", "twenty"], "number", 0, 2),
        (["1,000 people", "1000", "999"], "number", 0, 2),
        (["no number", "No number!", "7"], "number", 0, 2),  # no number: compared by text
    ],
)
def test_majority_over_normalised_answers(drafts, how, winner, votes):
    assert majority(drafts, how) == (winner, votes)


def test_normalize():
    assert normalize("  The  Answer: PARIS!  ") == "the answer: paris"
    assert normalize("“Paris.”") == "paris"
    assert normalize("It costs $2.50, not 3.", "number") == "3" and normalize("2.50", "number") == "2.5"


def test_k1_at_temperature_0_equals_the_plain_stage(tiny_engine):
    plain = Stack(parse_stack_config(PLAIN), tiny_engine).run_batch(PROMPTS)
    engine = Counting(tiny_engine)
    voted = Stack(parse_stack_config(voting(k=1, temperature=0)), engine).run_batch(PROMPTS)
    assert [c[:2] for c in engine.calls] == [("generate", 3), ("generate", 3)]  # greedy: one batched call
    for p, v in zip(plain, voted, strict=True):
        a, b = p.trace[1], v.trace[1]
        assert b.kind == "vote" and b.output == a.output and b.drafts == (a.output,) and b.confidence == 1.0
        assert (b.input, b.tokens_in, b.tokens_out) == (a.input, a.tokens_in, a.tokens_out)
        assert v.answer == p.answer and v.answer_stage == "answer"


class Scripted(Counting):
    """Draft j of any prompt is scripted[j] (the seed says which draft is asked for)."""

    def __init__(self, engine, scripted):
        super().__init__(engine)
        self.scripted = scripted

    def generate(self, texts, params, adapter=None):
        if params.temperature == 0:
            return super().generate(texts, params, adapter)
        self.calls.append(("generate", len(texts), params.seed))
        return [Generation(self.scripted[params.seed], 3, 2, 0.0, "stop") for _ in texts]


def test_the_majority_wins_and_ties_go_to_the_first_draft(tiny_engine):
    scripted = ["Paris", "London", "paris.", "London", "Rome"]
    engine = Scripted(tiny_engine, scripted)
    stack = Stack(parse_stack_config(voting(k=5, temperature=0.8, seed=0)), engine)
    result = stack.run(PROMPTS[0])
    vote = result.trace[1]
    assert vote.drafts == tuple(scripted) and vote.output == "Paris" and result.answer == "Paris"
    assert vote.confidence == pytest.approx(2 / 5) and vote.decision == "2/5 drafts agree (draft 1 kept)"
    assert (vote.tokens_in, vote.tokens_out) == (15, 10)  # five drafts' cost
    assert [c[2] for c in engine.calls if c[2] is not None] == [0, 1, 2, 3, 4]  # draft j alone, seed + j


def test_sampled_drafts_are_the_same_in_a_batch_and_alone(tiny_engine):
    cfg = parse_stack_config(voting(k=3, temperature=1.0, seed=5))
    engine = Counting(tiny_engine)
    stack = Stack(cfg, engine)
    batch = stack.run_batch(PROMPTS)
    assert engine.calls.count(("generate", 1, None)) == 9  # 3 prompts x 3 drafts, one each
    alone = [stack.run(p) for p in PROMPTS]
    assert [r.trace[1].drafts for r in batch] == [r.trace[1].drafts for r in alone]
    assert [r.answer for r in batch] == [r.answer for r in alone]
    assert any(len(set(r.trace[1].drafts)) > 1 for r in batch)  # sampling happened
    params = generation_params(cfg.stage("answer"))
    import dataclasses

    first = tiny_engine.generate(
        [batch[0].trace[1].input], dataclasses.replace(params, temperature=1.0, seed=6), adapter=None
    )
    assert batch[0].trace[1].drafts[1] == first[0].text  # draft 1 is seed 5 + 1, alone


SCORE_VOTE = {
    "name": "sv",
    "base_model": "tiny",
    "stages": [
        {"name": "draft", "instruction": "Think.", "generation": {"max_new_tokens": 4}},
        {
            "name": "pick",
            "instruction": "Answer.",
            "sees": ["prompt", "draft"],
            "score": {"format": "chat"},
            "vote": {"k": 3, "temperature": 1.0, "seed": 1, "over": "draft"},
        },
    ],
}


def test_score_votes_average_option_probabilities_over_drafts(tiny_engine):
    stack = Stack(parse_stack_config(SCORE_VOTE), tiny_engine)
    results = stack.run_batch(MC)
    for prompt, result in zip(MC, results, strict=True):
        pick = result.trace[1]
        assert pick.kind == "vote" and len(pick.drafts) == 3 and result.answer == pick.output
        mean = [0.0] * len(pick.options)
        for draft in pick.drafts:
            text = stack.stage_input(1, prompt, {"draft": draft})
            scores = [s.logprob for s in tiny_engine.score([text] * len(pick.options), list(pick.options))]
            total = sum(math.exp(s) for s in scores)
            mean = [m + math.exp(s) / total / 3 for m, s in zip(mean, scores, strict=True)]
        assert pick.option_scores == pytest.approx([math.log(m) for m in mean], abs=1e-4)
        assert pick.output == pick.options[max(range(len(mean)), key=mean.__getitem__)]
        top, second = sorted(mean, reverse=True)[:2]
        assert pick.confidence == pytest.approx(top - second, abs=1e-4)
    alone = [stack.run(p).trace[1] for p in MC]
    for r, a in zip(results, alone, strict=True):
        assert r.trace[1].drafts == a.drafts and r.trace[1].option_scores == pytest.approx(a.option_scores, abs=1e-4)


def test_a_score_vote_of_one_greedy_draft_picks_what_the_score_stage_picks(tiny_engine):
    data = copy.deepcopy(SCORE_VOTE)
    data["stages"][1]["vote"] = {"k": 1, "temperature": 0, "over": "draft"}
    voted = Stack(parse_stack_config(data), tiny_engine).run_batch(MC)
    del data["stages"][1]["vote"]
    plain = Stack(parse_stack_config(data), tiny_engine).run_batch(MC)
    for v, p in zip(voted, plain, strict=True):
        assert v.trace[1].drafts == (p.trace[0].output,) and v.answer == p.answer
        scores = p.trace[1].option_scores
        log_total = math.log(sum(math.exp(s) for s in scores))
        assert v.trace[1].option_scores == pytest.approx([s - log_total for s in scores], abs=1e-5)
