"""A stack whose answer stage is a `score` stage, in `fslm eval`: its option scores ARE the choice scores, equal to
what the chat-answer (or raw / raw-adapter) scoring path gives for the same stack."""

from __future__ import annotations

import copy

import pytest

from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.evaluate import StackSystem, evaluate
from fslm.stack import Stack

from .test_run import STACK

SCORED = {
    "name": "scored",
    "base_model": "tiny",
    "stages": [
        dict(STACK["stages"][0]),
        {
            "name": "pick",
            "instruction": STACK["stages"][1]["instruction"],
            "sees": ["prompt", "facts"],
            "label": "Answer",
            "score": {"format": "chat"},
            "when": "has_options",
            "final": True,
        },
        dict(STACK["stages"][1], when="no_options", final=True),
    ],
}


def rows_without_time(summary):
    return [{k: v for k, v in r.items() if k not in ("seconds", "stages")} for r in summary.rows]


def test_a_chat_score_stage_scores_what_the_chat_answer_stage_is_scored_on(tiny_engine, tiny_data):
    plain = evaluate(StackSystem(Stack(parse_stack_config(STACK), tiny_engine)), ["arc_easy", "gsm8k"])
    system = StackSystem(Stack(parse_stack_config(SCORED), tiny_engine))
    scored = evaluate(system, ["arc_easy", "gsm8k"])
    assert rows_without_time(scored) == rows_without_time(plain)  # same scores, predictions, generations, tokens
    arc = [r for r in scored.rows if r["task"] == "arc_easy"]
    assert all(set(r["stages"]) == {"facts", "pick"} for r in arc)
    assert scored.data["stage_kinds"] == {"facts": "generate", "pick": "score", "answer": "generate"}
    assert scored.data["models"]["tiny"]["stages"] == ["facts", "pick", "answer"]


@pytest.mark.parametrize("with_adapter", [False, True])
def test_a_raw_score_stage_equals_the_raw_answer_formats(tiny_model_dir, tiny_adapters, tiny_data, with_adapter):
    from fslm.engine import load_engine

    engine = load_engine(str(tiny_model_dir))  # its own engine: adapters must not leak into the shared one
    old, new = copy.deepcopy(STACK), copy.deepcopy(SCORED)
    new["stages"][1].update(score={"format": "raw"})
    if with_adapter:
        old["stages"][1]["adapter"] = new["stages"][1]["adapter"] = str(tiny_adapters["answer"])
    answer_format = "raw-adapter" if with_adapter else "raw"
    reference = evaluate(StackSystem(Stack(parse_stack_config(old), engine), answer_format=answer_format), ["arc_easy"])
    scored = evaluate(StackSystem(Stack(parse_stack_config(new), engine)), ["arc_easy"])
    for a, b in zip(scored.rows, reference.rows, strict=True):
        assert a["choice_scores"] == pytest.approx(b["choice_scores"], abs=1e-4)
        assert a["prediction"] == b["prediction"] and a["tokens_in"] == b["tokens_in"]


def test_a_score_answer_stage_takes_answer_format_stack_only(tiny_engine):
    stack = Stack(parse_stack_config(SCORED), tiny_engine)
    with pytest.raises(InputError, match="is a score stage"):
        StackSystem(stack, answer_format="raw")
