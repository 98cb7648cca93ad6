"""The pairwise judge: verdict arithmetic, both orders asked, identical answers never asked."""

from __future__ import annotations

import math

import pytest

from fslm.evaluate.judge import Judgement, judge_pairs, judge_prompt


@pytest.mark.parametrize(
    ("p_first", "p_second", "verdict"),
    [(0.9, 0.8, 1.0), (0.2, 0.1, 0.0), (0.9, 0.3, 0.5), (0.3, 0.9, 0.5), (0.5, 0.5, 0.0)],
)
def test_verdict_needs_both_orders(p_first, p_second, verdict):
    assert Judgement(p_first, p_second).verdict == verdict
    assert Judgement(p_first, p_second).preference == pytest.approx((p_first + p_second) / 2)


def test_identical_is_a_tie():
    j = Judgement(0.99, 0.99, identical=True)
    assert (j.verdict, j.preference) == (0.5, 0.5)


class CountingEngine:
    """The tiny engine, counting what the judge asks it to score."""

    def __init__(self, engine):
        self.inner = engine
        self.scored: list[tuple[str, str]] = []

    def render_chat(self, messages):
        return self.inner.render_chat(messages)

    def score(self, contexts, continuations, adapter=None):
        self.scored.extend(zip(contexts, continuations, strict=True))
        return self.inner.score(contexts, continuations, adapter=adapter)


def test_judge_asks_both_orders_and_is_antisymmetric(tiny_engine):
    engine = CountingEngine(tiny_engine)
    instr, ref = ["Name a primary colour.", "Add 2 and 3."], ["Red.", "5"]
    xs, ys = ["Blue is one.", "It is 5."], ["Green grass.", "2 and 3 make 6."]
    forward = judge_pairs(engine, instr, ref, xs, ys)
    assert len(engine.scored) == 2 * 2 * 2  # items x orders x letters
    assert {c for _, c in engine.scored} == {"A", "B"}
    backward = judge_pairs(engine, instr, ref, ys, xs)
    for f, b in zip(forward, backward, strict=True):
        assert 0.0 < f.p_first < 1.0 and 0.0 < f.p_second < 1.0
        # swapping x and y swaps the two orders: P(x better) + P(y better) == 1 exactly
        assert f.preference + b.preference == pytest.approx(1.0, abs=1e-9)
        assert f.verdict + b.verdict == 1.0
    # the prompt shows x first in one order and second in the other
    prompt = judge_prompt(tiny_engine, instr[0], ref[0], xs[0], ys[0])
    assert prompt.index(xs[0]) < prompt.index(ys[0])
    assert not math.isnan(forward[0].preference)


def test_identical_answers_are_not_asked(tiny_engine):
    engine = CountingEngine(tiny_engine)
    out = judge_pairs(engine, ["Say hi."], ["Hi."], [" Hello! "], ["Hello!"])
    assert engine.scored == [] and out[0].identical and out[0].verdict == 0.5


def test_lengths_must_match(tiny_engine):
    with pytest.raises(ValueError, match="same length"):
        judge_pairs(tiny_engine, ["a", "b"], ["r"], ["x"], ["y"])


def test_rate_answers_is_p_yes_and_asks_once_per_answer(tiny_engine):
    from fslm.evaluate.judge import rate_answers

    engine = CountingEngine(tiny_engine)
    p = rate_answers(engine, ["Name a colour.", "Add 2 and 3."], ["Red.", "5"], ["Blue.", "6"])
    assert len(p) == 2 and all(0.0 < x < 1.0 for x in p)
    assert [c for _, c in engine.scored] == ["Yes", "No", "Yes", "No"]
    alone = rate_answers(tiny_engine, ["Name a colour."], ["Red."], ["Blue."])
    assert alone == pytest.approx([p[0]], rel=1e-3)  # batch == alone
