"""Hallucination checker on a tiny random model: probabilities, prompts, the F1-best threshold, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fslm.collaborate.checker import (
    CheckItem,
    auroc,
    best_cut,
    check_item,
    check_prompt,
    choose_threshold,
    fit_checker,
    flag_unsupported,
    p_supported,
)
from fslm.errors import InputError
from fslm.evaluate.stats import group_bootstrap
from fslm.stages.verify import p_yes

ITEMS = [
    ("Which planet is largest?", "Jupiter", None),
    ("Which planet is largest?", "Mars", ["Jupiter is the largest planet."]),
    ("How many legs has a spider?", "eight", ["A spider has eight legs.", "Water boils at 100 degrees."]),
]


def test_probabilities_in_unit_interval_and_match_direct_scoring(tiny_engine):
    probs = p_supported(tiny_engine, ITEMS)
    assert len(probs) == 3 and all(0.0 < p < 1.0 for p in probs)
    prompt = check_prompt(check_item(ITEMS[1]))
    yes, no = tiny_engine.score([prompt, prompt], [" yes", " no"])
    assert probs[1] == pytest.approx(p_yes(yes.logprob, no.logprob))
    sharper = p_supported(tiny_engine, ITEMS, temperature=0.5)
    for p, q in zip(probs, sharper):  # T < 1 pushes each probability away from 1/2
        assert abs(q - 0.5) >= abs(p - 0.5) - 1e-12
    assert p_supported(tiny_engine, []) == []


def test_passages_change_the_prompt_and_the_probability(tiny_engine):
    bare = CheckItem("Which planet is largest?", "Mars")
    read = CheckItem("Which planet is largest?", "Mars", ("Jupiter is the largest planet.",))
    assert "Is the answer true?" in check_prompt(bare) and "Passages" not in check_prompt(bare)
    with_p = check_prompt(read)
    assert "[1] Jupiter is the largest planet." in with_p and "supported by these passages" in with_p
    p_bare, p_read = p_supported(tiny_engine, [bare, read])
    assert p_bare != p_read
    assert check_item({"question": "q?", "answer": "a", "passages": ["x"]}) == CheckItem("q?", "a", ("x",))


def test_threshold_selection_picks_the_f1_best_cut():
    probs = [0.1, 0.2, 0.3, 0.8, 0.9, 0.35]
    unsupported = [True, True, False, False, False, True]
    cut = choose_threshold(probs, unsupported)
    # flagging p < 0.575 (between 0.35 and 0.8) catches all three unsupported answers and one supported one: F1 = 6/7, the best cut
    assert cut.threshold == pytest.approx(0.575)
    assert (cut.precision, cut.recall, cut.f1) == pytest.approx((0.75, 1.0, 6 / 7))
    assert flag_unsupported(probs, cut.threshold) == [True, True, True, False, False, True]
    # a perfectly separable set: the cut falls between the classes
    assert choose_threshold([0.1, 0.2, 0.6, 0.7], [True, True, False, False]).threshold == pytest.approx(0.4)
    # every item unsupported: flag everything (threshold above the largest probability, still <= 1)
    everything = choose_threshold([0.2, 0.9], [True, True])
    assert everything.f1 == 1.0 and 0.9 < everything.threshold <= 1.0
    # a length-style score (any real numbers)
    assert best_cut([-3.0, -10.0, -12.0], [False, True, True]).threshold == pytest.approx(-6.5)


def test_fit_checker_scales_then_keeps_the_same_separation():
    rng = np.random.default_rng(0)
    unsupported = rng.random(200) < 0.4
    logit = np.where(unsupported, -1.0, 1.0) + rng.normal(0, 2, 200)  # true log-odds = logit / 2: T near 2
    probs = 1 / (1 + np.exp(-logit))
    fit = fit_checker(probs, unsupported)
    assert fit.temperature > 1.0 and 0 <= fit.threshold <= 1
    raw = choose_threshold(probs, unsupported)
    assert fit.f1 == pytest.approx(raw.f1)  # scaling is monotone: the best cut separates the same items
    assert sum(fit.flag(probs)) == sum(p < raw.threshold for p in probs)


def test_auroc_and_group_bootstrap():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [True, True]))
    groups = ["a", "a", "b", "b", "c", "c"]
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    y = np.array([True, False] * 3)
    ci = group_bootstrap(groups, lambda idx: {"auroc": auroc(scores[idx], y[idx])}, n_boot=200)
    assert ci["auroc"] == (1.0, 1.0)  # every resample of whole questions keeps both classes, perfectly separated


@pytest.mark.parametrize(
    "bad, message",
    [
        (("", "a"), "'question' must be a non-empty string"),
        (("q?", None), "'answer' must be a non-empty string"),
        (("q?", "a", []), "empty list; pass null"),
        (("q?", "a", "one passage"), "must be a list of strings"),
        (("q?", "a", ["ok", " "]), "every passage"),
        ({"question": "q?", "answer": "a", "context": "x"}, "unknown field"),
        ("just text", "expected (question, answer"),
    ],
)
def test_bad_items_raise_one_clear_error(tiny_engine, bad, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        p_supported(tiny_engine, [("fine?", "yes"), bad])


def test_bad_thresholds_and_labels():
    with pytest.raises(InputError, match="temperature"):
        p_supported(None, [("q?", "a")], temperature=0)
    with pytest.raises(InputError, match="outside"):
        flag_unsupported([0.5], 1.5)
    with pytest.raises(InputError, match="at least one unsupported"):
        choose_threshold([0.2, 0.4], [False, False])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        choose_threshold([0.2, 1.4], [True, False])
    with pytest.raises(InputError, match="2 scores but 3 labels"):
        choose_threshold([0.2, 0.4], [True, False, True])
    with pytest.raises(InputError, match="at least one supported"):
        fit_checker([0.2, 0.4], [True, True])


def test_group_bootstrap_resamples_whole_groups():
    groups = ["a", "b", "a", "c", "b", "c", "c"]  # items of a group need not be contiguous
    seen = []

    def record(idx):
        picked = [groups[i] for i in idx]
        for g in set(picked):  # a group comes in whole (all its items, each the same number of times)
            members = [i for i, x in enumerate(groups) if x == g]
            assert sorted(idx[np.isin(idx, members)]) == sorted(members * (picked.count(g) // len(members)))
        seen.append(len(idx))
        return {"n": float(len(idx))}

    ci = group_bootstrap(groups, record, n_boot=50, seed=1)
    # three draws from groups of 2, 2 and 3 items: 6..9 items, and not always the same number
    assert len(seen) == 50 and set(seen) <= {6, 7, 8, 9} and len(set(seen)) > 1
    assert 6 <= ci["n"][0] < ci["n"][1] <= 9
    assert group_bootstrap([], record) == {}
