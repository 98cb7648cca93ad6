"""acc / acc_norm / mc2 / gsm8k exact match on hand-built scores, as lm-eval defines them."""

import math

import pytest

from fslm.evaluate.prompts import stack_continuations, stack_prompt
from fslm.evaluate.scoring import extract_number, mc2_mass, norm_length, numbers_match, score_choices
from fslm.tasks import Item


def mc_item(task="arc_easy", gold=0, choices=("a", "bbbbbbbbbb", "cc"), gold_set=()):
    return Item(
        id=f"{task}/x",
        task=task,
        question="Q?",
        choices=tuple(choices),
        gold=gold,
        context="Question: Q?\nAnswer:",
        continuations=tuple(" " + c for c in choices),
        gold_set=tuple(gold_set),
    )


def test_acc_uses_the_raw_sum_and_acc_norm_divides_by_choice_characters():
    item = mc_item(gold=1)
    scores = [-2.0, -10.0, -4.0]  # raw argmax: 0; per char: -2/1, -10/10 = -1.0, -4/2 -> argmax 1
    lengths = [norm_length(c) for c in item.continuations]
    assert lengths == [1, 10, 2]  # lm-eval: len(choice) without the " " target delimiter
    res = score_choices(item, scores, lengths)
    assert (res.prediction, res.prediction_norm) == (0, 1)
    assert res.correct is False and res.acc == 0.0 and res.acc_norm == 1.0


def test_ties_pick_the_first_choice_like_numpy_argmax():
    res = score_choices(mc_item(gold=0), [-1.0, -1.0, -3.0], [1, 1, 1])
    assert res.prediction == 0 and res.acc == 1.0


def test_acc_norm_is_null_where_lm_eval_does_not_report_it():
    item = mc_item(task="boolq", choices=("no", "yes"), gold=1)
    res = score_choices(item, [-1.0, -0.5], [2, 3])
    assert res.acc == 1.0 and res.acc_norm is None


def test_mc2_is_normalised_probability_mass_on_true_answers():
    assert mc2_mass([math.log(0.5), math.log(0.25), math.log(0.25)], [0, 2]) == pytest.approx(0.75)
    # shift invariance: only relative logprobs matter, even when exp() would underflow
    assert mc2_mass([-1000.0, -1000.0 - math.log(3)], [0]) == pytest.approx(0.75)
    item = mc_item(task="truthfulqa_mc2", gold=0, choices=("t1", "f1", "t2"), gold_set=(0, 2))
    res = score_choices(item, [math.log(0.2), math.log(0.6), math.log(0.2)], [2, 2, 2])
    assert res.acc == pytest.approx(0.4) and res.correct is False and res.acc_norm is None


def test_mismatched_score_count_is_an_error():
    with pytest.raises(ValueError):
        score_choices(mc_item(), [-1.0], [1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 5 + 3 = 8 apples.\n#### 8", "8"),
        ("The answer is $1,250.", "1250"),
        ("first 3 then 4 then -12", "-12"),
        ("It is 18.", "18"),
        ("#### 72 and then 5 more words 9", "72"),
        ("no digits here", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numbers_match_by_value():
    assert numbers_match("18.00", "18") and numbers_match("2000", "2,000") and not numbers_match("17", "18")
    assert not numbers_match(None, "3")


def test_stack_prompt_lists_options_and_scores_plain_choice_text():
    item = mc_item(choices=("red", " blue "), gold=0)
    prompt = stack_prompt(item)
    assert prompt == "Q?\n\nOptions:\nA. red\nB. blue"
    assert stack_continuations(item) == ("red", "blue")
    gen = Item(
        id="gsm8k/1",
        task="gsm8k",
        question="2+2?",
        choices=(),
        gold="4",
        context="Question: 2+2?\nAnswer:",
        continuations=(),
    )
    assert stack_prompt(gen) == "2+2?"
