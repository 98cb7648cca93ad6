"""Per-stage target length limits: `max_target_tokens` in the stack config, checked by distill; leaks vs the prompt."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fslm.config import parse_stack_config
from fslm.distill import DistillOptions, distill, leak_stages
from fslm.distill.filters import trim_to_sentences
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
    {
        "instruction": "Complete the sentence: the cat sat on the warm mat by the",
        "input": "",
        "output": "The cat sat on the warm mat by the fire.",
    },
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
    filtered = _run(
        tmp_path,
        tiny_model_dir,
        None,
        "the cat sat on the warm mat by the; two plus two is four, the sum of the numbers",
    )
    assert filtered == [[], ["intent:answer_leak"]]


def test_a_target_limit_above_the_generation_budget_is_a_config_error():
    cfg = {
        "name": "s",
        "stages": [
            {"name": "answer", "instruction": "A.", "generation": {"max_new_tokens": 64}, "max_target_tokens": 65}
        ],
    }
    with pytest.raises(ConfigError, match=r"stages\.0: max_target_tokens 65 exceeds generation\.max_new_tokens 64"):
        parse_stack_config(cfg, "s.yaml")
    assert (
        parse_stack_config({**cfg, "stages": [{**cfg["stages"][0], "max_target_tokens": 64}]})
        .stages[0]
        .max_target_tokens
        == 64
    )


def test_trim_keeps_whole_leading_sentences_that_fit():
    count = lambda text: len(text.split())  # noqa: E731 - one token per word is enough to test the cut
    text = "The first sentence has six words. The second one has six too. Third is cut mid"
    assert trim_to_sentences(text, 13, count) == "The first sentence has six words. The second one has six too."
    assert trim_to_sentences(text, 8, count) == "The first sentence has six words."
    assert trim_to_sentences(text, 5, count) is None  # not even one sentence fits
    assert trim_to_sentences("Short. Too", 10, count) is None  # what fits is under min_words
    assert (
        trim_to_sentences('He said "stop." Then he left the room quietly.', 3 + 6, count)
        == 'He said "stop." Then he left the room quietly.'
    )


@given(st.lists(st.sampled_from(["a", "bb", "c.", "d!", "e?", " ", "f\n"]), max_size=40), st.integers(1, 30))
def test_trim_property_fits_and_is_a_prefix(parts, budget):
    text = " ".join(parts)
    count = lambda t: len(t.split())  # noqa: E731
    cut = trim_to_sentences(text, budget, count, min_words=1)
    if cut is not None:
        assert text.startswith(cut) and count(cut) <= budget and cut.rstrip()[-1] in ".!?"


def test_a_long_target_is_trimmed_and_kept_or_dropped_when_trim_is_off(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    first = "Cats like warm places to rest."
    long_facts = f"{first} " + "They also sleep a great deal during the long warm day " * 3
    cfg = tiny_stack(tiny_model_dir)
    cfg["stages"][0]["generation"]["max_new_tokens"] = 64
    cfg["stages"][1]["generation"]["max_new_tokens"] = (
        len(AutoTokenizer.from_pretrained(tiny_model_dir)(first + " They")["input_ids"]) + 1
    )
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(cfg))
    teacher = ScriptedTeacher({"Restate.": "A request about a cat.", "Facts.": long_facts})
    data = write_alpaca(tmp_path / "a.json", RECORDS)
    distill(stack, data, tmp_path / "trim.jsonl", teacher=teacher)
    rows = read_lines(tmp_path / "trim.jsonl")
    assert [r["filtered"] for r in rows] == [[], []]
    assert all(r["targets"]["facts"] == first and r["trimmed"] == ["facts"] for r in rows)
    distill(stack, data, tmp_path / "strict.jsonl", teacher=teacher, options=DistillOptions(trim=False))
    assert all("facts:too_long" in r["filtered"] for r in read_lines(tmp_path / "strict.jsonl"))


def test_only_stages_whose_teacher_saw_the_gold_are_leak_checked(tiny_model_dir):
    cfg = tiny_stack(tiny_model_dir)
    cfg["stages"].insert(2, {"name": "draft", "instruction": "Draft.", "generation": {"max_new_tokens": 8}})
    assert leak_stages(parse_stack_config(cfg), None) == {"intent", "facts"}
    cfg["stages"][1]["teacher_prompt"] = "Question: {prompt}\nList the facts."  # facts recalled without the gold
    assert leak_stages(parse_stack_config(cfg), None) == {"intent"}
    assert leak_stages(parse_stack_config(cfg), ["facts"]) == {"facts"}  # an explicit list holds as given
