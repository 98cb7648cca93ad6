"""Live cascade on tiny models: threshold 0 never escalates, threshold 1 always does, rows carry both answers."""

from __future__ import annotations

import pytest

from fslm.collaborate.live import System, cascade_items, cascade_prompts, verify
from fslm.errors import InputError
from fslm.tasks import Item


@pytest.fixture(scope="module")
def items():
    qs = [
        ("Which planet is largest?", ("Jupiter", "Mars")),
        ("Water boils at", ("100 degrees", "10 degrees")),
        ("A spider has", ("eight legs", "six legs")),
        ("The capital of France is", ("Paris", "Rome")),
    ]
    return [
        Item(f"toy/{i}", "toy", q, c, 0, f"Question: {q}\nAnswer:", tuple(" " + x for x in c))
        for i, (q, c) in enumerate(qs)
    ]


@pytest.fixture(scope="module")
def systems(tiny_engine, draft_engine, tiny_model_dir, tiny_draft_dir):
    return System(str(tiny_model_dir), engine=tiny_engine, max_new_tokens=8), System(
        str(tiny_draft_dir), engine=draft_engine, max_new_tokens=8
    )


def test_verify_gives_probabilities(tiny_engine):
    out = verify(tiny_engine, ["Which planet is largest?", "Two plus two?"], ["Jupiter", "five"])
    assert all(0.0 < p < 1.0 and tokens > 5 and sec >= 0 for p, tokens, sec in out)


@pytest.mark.parametrize("signal", ["margin", "verify"])
def test_items_threshold_extremes(items, systems, signal):
    small, large = systems
    keep, summary = cascade_items(items, small, large, signal=signal, threshold=0.0)
    assert summary["escalation_rate"] == 0 and not any(r["escalated"] for r in keep)
    alone = small.score_items(items)
    assert [r["prediction"] for r in keep] == [r["prediction"] for r in alone]
    escalate, summary = cascade_items(items, small, large, signal=signal, threshold=1.0)
    # Escalation is confidence < threshold: at 1.0 only a fully certain small answer (confidence exactly 1) stays.
    assert [r["escalated"] for r in escalate] == [r["confidence"] < 1.0 for r in escalate]
    assert summary["escalation_rate"] > 0
    big = large.score_items(items)
    for row, alone_row, big_row in zip(escalate, alone, big):
        expected = big_row if row["escalated"] else alone_row
        assert row["prediction"] == expected["prediction"]
        assert row["stages"] == (["small", "large"] if row["escalated"] else ["small"])
    assert summary["flops"] > cascade_items(items, small, large, signal=signal, threshold=0.0)[1]["flops"]


def test_prompts_threshold_extremes(systems):
    small, large = systems
    prompts = ["What is the capital of France?", "Which planet is largest?"]
    kept = cascade_prompts(prompts, small, large, 0.0)
    assert not any(r.escalated for r in kept) and [r.answer for r in kept] == [a.text for a in small.answer(prompts)]
    moved = cascade_prompts(prompts, small, large, 1.0)
    assert all(r.escalated for r in moved) and [r.answer for r in moved] == [a.text for a in large.answer(prompts)]
    assert moved[0].to_dict()["large"]["text"] == moved[0].answer


def test_bad_threshold(items, systems):
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        cascade_items(items, *systems, signal="margin", threshold=1.2)
    with pytest.raises(InputError, match="unknown signal"):
        cascade_items(items, *systems, signal="entropy", threshold=0.5)
