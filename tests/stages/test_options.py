"""The option syntax a person types (and `fslm eval` shows a stack): parsed by one pure function."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from fslm.stages.score import choices_from_prompt, format_options, parse_options


@pytest.mark.parametrize(
    ("prompt", "question", "options"),
    [
        ("Which is a planet?\n\nOptions:\nA. Mars\nB. The Sun", "Which is a planet?", ("Mars", "The Sun")),
        ("Which is a planet?\nA) Mars\nB) The Sun\nC) Io  ", "Which is a planet?", ("Mars", "The Sun", "Io")),
        ("Pick one.\r\n(A) yes\r\n(B) no\r\n", "Pick one.", ("yes", "no")),
        ("choices:\nA. x\nB. y", "", ("x", "y")),
        ("Is 2 > 1?\n  A. yes, since 2 - 1 = 1\n  B. no", "Is 2 > 1?", ("yes, since 2 - 1 = 1", "no")),
    ],
)
def test_options_are_parsed(prompt, question, options):
    parsed = parse_options(prompt)
    assert parsed is not None and parsed.question == question and parsed.options == options


@pytest.mark.parametrize(
    "prompt",
    [
        "What is the capital of France?",
        "Only one:\nA. Paris",
        "Wrong start:\nB. x\nC. y",
        "Skipped letter:\nA. x\nC. y",
        "Options not at the end:\nA. x\nB. y\nAnswer with the letter.",
        "Lowercase:\na. x\nb. y",
        "No text:\nA.\nB.",
    ],
)
def test_no_options(prompt):
    assert parse_options(prompt) is None and choices_from_prompt(prompt) is None


def test_raw_choices_are_lm_eval_style():
    choices = choices_from_prompt("Which gas do plants take in?\nA. oxygen\nB. carbon dioxide")
    assert choices.raw_contexts == ("Question: Which gas do plants take in?\nAnswer:",) * 2
    assert choices.raw_continuations == (" oxygen", " carbon dioxide") and choices.continuations == choices.options


def test_eval_prompts_parse_back_to_their_choices():
    from fslm.evaluate.prompts import stack_prompt
    from fslm.tasks import Item

    item = Item(
        id="t/1",
        task="arc_easy",
        question="Which gas?",
        context="Question: Which gas?\nAnswer:",
        choices=(" oxygen", " carbon dioxide"),
        continuations=(" oxygen", " carbon dioxide"),
        gold=1,
    )
    parsed = parse_options(stack_prompt(item))
    assert parsed.question == "Which gas?" and parsed.options == ("oxygen", "carbon dioxide")


line = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30)
option = line.map(str.strip).filter(bool)


@FUZZ
@given(line, st.lists(option, min_size=2, max_size=26))
def test_format_then_parse_round_trips(question, options):
    parsed = parse_options(format_options(question.strip(), options))
    assert parsed is not None and parsed.options == tuple(options)
