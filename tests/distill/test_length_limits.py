"""Per-stage target length limits: `max_target_tokens` in the stack config, checked by distill; leaks vs the prompt."""

from __future__ import annotations

import pytest
import yaml

from fslm.config import parse_stack_config
from fslm.distill import distill
from fslm.errors import ConfigError
from fslm.teachers import TeacherReply

from .conftest import read_lines, tiny_stack, write_alpaca


class ScriptedTeacher:
    """Answers every request for a stage with a fixed text (the stage name is the system message)."""

    id = "scripted"

    def __init__(self, texts: dict[str, str]):
        self.texts = texts

    def generate(self, requests, params):
        return [TeacherReply(self.texts[msgs[0]["content"]], 0.0, "stop") for msgs in requests]

    def close(self) -> None:
        pass


RECORDS = [
    {"instruction": "Complete the sentence: the cat sat on the warm mat by the", "input": "", "output": "The cat sat on the warm mat by the fire."},
    {"instruction": "What is two plus two?", "input": "", "output": "Two plus two is four, the sum of the numbers."},
]


def _run(tmp_path, tiny_model_dir, answer_limit: int | None, intent: str):
    cfg = tiny_stack(tiny_model_dir)  # intent is leak-checked by default (facts drafts for the answer stage)
    cfg["stages"][0]["generation"]["max_new_tokens"] = 64
    if answer_limit is not None:
        cfg["stages"][2]["max_target_tokens"] = answer_limit
    stack = tmp_path / f"stack-{answer_limit}.yaml"
    stack.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"d-{answer_limit}.jsonl"
    teacher = ScriptedTeacher({"Restate.": intent, "Facts.": "Numbers."})
    distill(stack, write_alpaca(tmp_path / "a.json", RECORDS), out, teacher=teacher)
    return [r["filtered"] for r in read_lines(out)]


def test_max_target_tokens_sets_the_answer_limit(tmp_path, tiny_model_dir):
    assert _run(tmp_path, tiny_model_dir, None, "A request.") == [[], []]  # 48-token answer stage: both golds fit
    assert _run(tmp_path, tiny_model_dir, 3, "A request.") == [["answer:too_long"], ["answer:too_long"]]


def test_intent_may_repeat_the_prompt_but_not_the_answer(tmp_path, tiny_model_dir):
    # the first gold repeats its prompt: an intent that repeats the same words gives nothing away; the second is leaked
    filtered = _run(tmp_path, tiny_model_dir, None, "the cat sat on the warm mat by the; two plus two is four, the sum of the numbers")
    assert filtered == [[], ["intent:answer_leak"]]


def test_a_target_limit_above_the_generation_budget_is_a_config_error():
    cfg = {"name": "s", "stages": [{"name": "answer", "instruction": "A.", "generation": {"max_new_tokens": 64}, "max_target_tokens": 65}]}
    with pytest.raises(ConfigError, match=r"stages\.0: max_target_tokens 65 exceeds generation\.max_new_tokens 64"):
        parse_stack_config(cfg, "s.yaml")
    assert parse_stack_config({**cfg, "stages": [{**cfg["stages"][0], "max_target_tokens": 64}]}).stages[0].max_target_tokens == 64
