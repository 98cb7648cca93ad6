"""Calibration: ECE, reliability bins and temperature scaling on synthetic data whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fslm.evaluate.calibration import (
    bin_index,
    bootstrap_ece,
    ece,
    fit_binary_temperature,
    fit_platt,
    fit_temperature,
    golden_section,
    nll,
    reliability,
    reliability_plot,
    scale_binary,
    scale_platt,
    softmax,
    top_confidence,
)


def _sample(n: int, k: int, scale: float, seed: int) -> tuple[list[list[float]], list[int]]:
    """Items whose gold option is drawn from softmax(true logits); the scores reported are true logits * scale
    (scale > 1: an overconfident signal, scale < 1: underconfident, 1: calibrated)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, k))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    gold = [int(rng.choice(k, p=p)) for p in probs]
    return [list(row * scale) for row in logits], gold


def _ece_at(scores, gold, temperature: float) -> float:
    conf, pred = top_confidence(scores, temperature)
    return ece(conf, pred == np.asarray(gold))


def test_exactly_calibrated_bins_have_zero_ece():
    conf, outcome = [], []
    for c, right in ((0.15, 3), (0.35, 7), (0.55, 11), (0.75, 15), (0.95, 19)):  # 20 items each, accuracy = c
        conf += [c] * 20
        outcome += [True] * right + [False] * (20 - right)
    assert ece(conf, outcome) == pytest.approx(0.0, abs=1e-12)
    bins = reliability(conf, outcome)
    assert sum(b.n for b in bins) == 100 and [b.n for b in bins if b.n] == [20] * 5
    assert all(b.confidence is None and b.accuracy is None for b in bins if not b.n)


def test_sampled_calibrated_data_has_near_zero_ece_and_overconfident_data_does_not():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.0, 1.0, size=200_000)
    outcome = rng.uniform(size=conf.size) < conf
    assert ece(conf, outcome) < 0.01
    assert ece(np.minimum(conf + 0.2, 1.0), outcome) > 0.1


def test_ece_by_hand_and_bin_edges():
    # bin [0.8, 0.9): conf 0.8, 0.8 -> acc 0.5 (gap 0.3); bin [0.9, 1]: conf 1.0 -> acc 1 (gap 0): ECE = 2/3 * 0.3
    assert ece([0.8, 0.8, 1.0], [True, False, True]) == pytest.approx(0.2)
    assert list(bin_index(np.array([0.0, 0.1, 0.0999, 1.0]), 10)) == [0, 1, 0, 9]
    assert math.isnan(ece([], []))
    with pytest.raises(ValueError):
        ece([1.2], [True])


def test_softmax_and_nll_known_values():
    assert softmax([0.0, 0.0, 0.0, 0.0]) == pytest.approx([0.25] * 4)
    assert nll([[0.0, 0.0, 0.0, 0.0]], [2], 1.0) == pytest.approx(math.log(4))
    assert nll([[1.0, 2.0, 3.0]], [[0, 1, 2]], 1.0) == pytest.approx(0.0, abs=1e-12)  # the whole set is true
    assert softmax([2.0, 0.0], temperature=2.0) == pytest.approx(softmax([1.0, 0.0]))
    conf, pred = top_confidence([[0.0, 1.0], [-1.0, -1.0, -3.0]])
    assert list(pred) == [1, 0] and conf[0] == pytest.approx(1 / (1 + math.exp(-1)))


def test_overconfident_scores_get_t_above_one_and_scaling_helps_on_new_items():
    fit_scores, fit_gold = _sample(3000, 4, scale=3.0, seed=1)
    test_scores, test_gold = _sample(3000, 4, scale=3.0, seed=2)
    t = fit_temperature(fit_scores, fit_gold)
    assert 2.5 < t < 3.5  # the scores are the true logits times 3
    assert _ece_at(test_scores, test_gold, t) < _ece_at(test_scores, test_gold, 1.0) - 0.05
    assert nll(test_scores, test_gold, t) < nll(test_scores, test_gold, 1.0)


def test_underconfident_scores_get_t_below_one_and_calibrated_ones_about_one():
    s, g = _sample(3000, 3, scale=0.5, seed=3)
    assert 0.4 < fit_temperature(s, g) < 0.6
    s, g = _sample(3000, 3, scale=1.0, seed=4)
    assert 0.85 < fit_temperature(s, g) < 1.15


def test_temperature_never_changes_the_prediction():
    scores, gold = _sample(500, 5, scale=4.0, seed=5)
    t = fit_temperature(scores, gold)
    for temperature in (t, 0.05, 50.0):
        assert np.array_equal(top_confidence(scores, temperature)[1], top_confidence(scores, 1.0)[1])


def test_golden_section_fallback_finds_the_scipy_optimum():
    scores, gold = _sample(800, 4, scale=2.0, seed=6)
    assert fit_temperature(scores, gold, use_scipy=False) == pytest.approx(fit_temperature(scores, gold), rel=1e-3)
    assert golden_section(lambda x: (x - 0.3) ** 2, -2.0, 2.0) == pytest.approx(0.3, abs=1e-6)
    assert golden_section(lambda x: x, -2.0, 2.0) == -2.0  # monotone: the interval end


def test_ragged_items_and_always_right_fit_sets():
    scores = [[0.0, -1.0], [0.0, -2.0, -3.0, -4.0], [0.0, -0.5, -0.7]]
    t = fit_temperature(scores, [0, 0, 0])  # every gold is the top option: sharper is always better
    assert t == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError):
        fit_temperature(scores, [0, 0, 5])
    with pytest.raises(ValueError):
        fit_temperature([[float("nan"), 0.0]], [0])


def test_binary_probability_scaling():
    p = np.array([0.1, 0.5, 0.9])
    assert scale_binary(p, 1.0) == pytest.approx(p)
    logit = np.log(p / (1 - p))
    assert scale_binary(p, 2.0) == pytest.approx(1 / (1 + np.exp(-logit / 2)))
    rng = np.random.default_rng(7)
    true = rng.uniform(0.05, 0.95, size=4000)
    outcome = rng.uniform(size=true.size) < true
    over = 1 / (1 + np.exp(-3 * np.log(true / (1 - true))))  # logits tripled: overconfident
    t = fit_binary_temperature(over, outcome)
    assert 2.5 < t < 3.5
    assert ece(scale_binary(over, t), outcome) < ece(over, outcome)


def test_platt_scaling_moves_a_shifted_signal_that_temperature_cannot():
    rng = np.random.default_rng(3)
    true = rng.uniform(0.55, 0.95, size=4000)
    outcome = rng.uniform(size=true.size) < true
    logit = np.log(true / (1 - true))
    shifted = 1 / (1 + np.exp(-(0.5 * logit - 2.5)))  # P ~ 0.1-0.2 for events that happen 3 times in 4
    a, b = fit_platt(shifted, outcome)
    assert a == pytest.approx(2.0, abs=0.4) and b == pytest.approx(5.0, abs=0.8)  # the inverse map: 2 * (x + 2.5)
    assert scale_platt(shifted, a, b) == pytest.approx(1 / (1 + np.exp(-(a * (0.5 * logit - 2.5) + b))))
    t = fit_binary_temperature(shifted, outcome)
    # every shifted P is below 1/2 and logit(p) / T keeps its sign: no temperature reaches the 3-in-4 rate
    assert ece(scale_platt(shifted, a, b), outcome) < 0.03 and ece(scale_binary(shifted, t), outcome) > 0.2
    # one class only: no finite optimum, so the rate itself (clipped), whatever the inputs
    assert scale_platt([0.2, 0.9], *fit_platt([0.2, 0.9], [True, True])) == pytest.approx([1 - 1e-6] * 2)
    with pytest.raises(ValueError, match="no items"):
        fit_platt([], [])


def test_bootstrap_ece_intervals():
    scores, gold = _sample(600, 4, scale=3.0, seed=8)
    before, pred = top_confidence(scores)
    after, _ = top_confidence(scores, 3.0)
    res = bootstrap_ece(pred == np.asarray(gold), before, after, n_boot=500)
    e_before, e_after = ece(before, pred == np.asarray(gold)), ece(after, pred == np.asarray(gold))
    assert res["before_ci95"][0] <= e_before <= res["before_ci95"][1]
    assert res["after_ci95"][0] <= e_after <= res["after_ci95"][1]
    assert res["diff_ci95"][1] < 0 and res["p_diff_ge_0"] < 0.05


def test_reliability_plot_is_a_png():
    pytest.importorskip("matplotlib")
    bins = reliability([0.2, 0.6, 0.9, 0.95], [False, True, True, True])
    png = reliability_plot({"a": {"before": bins, "after": bins}, "b": {"before": bins}}, title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
