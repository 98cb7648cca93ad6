"""Cascade analysis on hand-made `fslm eval` runs (every number below is worked out by hand), plus the live cascade."""

from __future__ import annotations

import json
import math

import pytest

from fslm.collaborate.cascade import (
    Calibration,
    always,
    calibrate,
    calibrate_runs,
    cascade_point,
    evaluate_runs,
    random_escalation,
)
from fslm.collaborate.runs import choice_margin, pair_runs, read_run, split_pairs
from fslm.errors import DataError, InputError

from .conftest import make_rows, write_run

# (small correct, small top-choice probability) -> margins .9 .8 .6 .5 .2 .1 .04 0
SMALL = [(True, 0.95), (True, 0.9), (True, 0.8), (False, 0.75), (True, 0.6), (False, 0.55), (False, 0.52), (False, 0.5)]
LARGE = [False, True, True, True, True, True, True, True]


def two_choice(p: float) -> list[float]:
    return [math.log(p), math.log(1 - p)]


@pytest.fixture()
def runs(tmp_path):
    small = write_run(
        tmp_path / "small", make_rows([(c, two_choice(p)) for c, p in SMALL]), {"system": "small", "params": 100}
    )
    large = write_run(
        tmp_path / "large", make_rows([(c, two_choice(0.7)) for c in LARGE]), {"system": "large", "params": 400}
    )
    return small, large


@pytest.fixture()
def pairs(runs):
    return pair_runs(read_run(runs[0]), read_run(runs[1]))


def test_margin():
    assert choice_margin(two_choice(0.9)) == pytest.approx(0.8)
    assert choice_margin([0.0, 0.0, 0.0]) == pytest.approx(0.0)
    assert choice_margin([-1.0]) == 1.0


def test_points_by_hand(pairs):
    assert [p.small_cost for p in pairs] == [2000.0] * 8 and [p.large_cost for p in pairs] == [8000.0] * 8
    at = cascade_point(pairs, "margin", 0.3)  # escalates the 4 items with margin < .3; large gets all 4 right
    assert (at.acc, at.compute_share, at.escalation_rate) == (pytest.approx(7 / 8), pytest.approx(24 / 32), 0.5)
    none = cascade_point(pairs, "margin", 0.0)
    assert none.acc == 0.5 and none.compute_share == pytest.approx(0.25) and none.escalation_rate == 0
    small, large = always(pairs, "small"), always(pairs, "large")
    assert (small.acc, small.compute_share) == (0.5, pytest.approx(0.25))
    assert (large.acc, large.compute_share) == (7 / 8, 1.0)


def test_random_escalation_is_the_exact_expectation(pairs):
    r = random_escalation(pairs, 0.5)
    assert r.acc == pytest.approx(0.5 * 0.5 + 0.5 * 7 / 8)
    assert r.compute_share == pytest.approx((8 * 2000 + 0.5 * 8 * 8000) / 64000)
    routed = random_escalation(pairs, 0.5, small_first=False)
    assert routed.compute_share == pytest.approx((0.5 * 8 * 2000 + 0.5 * 8 * 8000) / 64000)


def test_calibrate_picks_the_cheapest_threshold_meeting_the_target(pairs):
    cal = calibrate(
        pairs, "margin", target=0.95
    )  # goal .95 * 7/8 = .83: escalating the 3 items with margin <= .1 is enough
    assert cal.met and cal.acc == pytest.approx(7 / 8) and cal.escalation_rate == pytest.approx(3 / 8)
    assert 0.1 < cal.threshold <= 0.2 and cal.compute_share == pytest.approx(20 / 32)
    assert cal.small_acc == 0.5 and cal.large_acc == 7 / 8 and cal.n == 8
    strict = calibrate(pairs, "margin", target=1.0)  # reaching 7/8 needs the same 3 escalations
    assert strict.threshold == cal.threshold


def test_verify_signal_from_signals_file_adds_its_cost(runs, tmp_path):
    signals = tmp_path / "signals.jsonl"
    rows = [
        {"task": "arc_easy", "id": f"arc_easy/test/{i}", "verify": v, "verify_flops": 500.0}
        for i, v in enumerate([0.9, 0.9, 0.9, 0.2, 0.9, 0.3, 0.1, 0.2])
    ]
    signals.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cal = calibrate_runs(runs[0], runs[1], signal="verify", target=1.0, signals=signals)
    # goal 7/8: escalating items 3, 6, 7 (verify <= .2) reaches it; cost 8*(2000+500) + 3*8000
    assert 0.2 < cal.threshold <= 0.3 and cal.acc == 7 / 8
    assert cal.compute_share == pytest.approx((8 * 2500 + 3 * 8000) / 64000)


def test_evaluate_writes_schema_table_and_png(runs, pairs, tmp_path):
    cal = calibrate(pairs, "margin", 0.95)
    report = evaluate_runs(runs[0], runs[1], cal, out_dir=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "cascade.json").read_text())
    assert saved["n"] == 8 and saved["small_acc"] == 0.5 and saved["large_acc"] == 0.875
    assert all(set(p) >= {"threshold", "acc", "compute_share"} and 0 <= p["threshold"] <= 1 for p in saved["points"])
    assert saved["random_same_rate"]["escalation_rate"] == report["calibrated"]["escalation_rate"]
    assert (tmp_path / "out" / "cascade.png").stat().st_size > 1000
    assert "random escalation" in (tmp_path / "out" / "cascade.md").read_text()


def test_calibration_roundtrip_and_errors(pairs, tmp_path):
    cal = calibrate(pairs, "margin", 0.95)
    assert Calibration.load(cal.save(tmp_path / "cal.json")) == Calibration(**cal.to_dict())
    with pytest.raises(DataError, match="calibration file not found"):
        Calibration.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"signal": "margin"}')
    with pytest.raises(DataError, match="not a calibration file"):
        Calibration.load(tmp_path / "bad.json")
    for t in (-0.1, 1.5):
        with pytest.raises(InputError, match=r"outside \[0, 1\]"):
            cascade_point(pairs, "margin", t)
    with pytest.raises(DataError, match="no 'verify' signal"):
        calibrate(pairs, "verify")
    with pytest.raises(DataError, match="at least 5"):
        calibrate(pairs[:4], "margin")


def test_bad_runs(tmp_path, runs):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "items.jsonl").write_text('{"id": "a", "task": "t", "correct": true}\n{oops\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed record: expected one JSON object per line"):
        read_run(bad)
    (bad / "items.jsonl").write_text('{"id": "a", "task": "t"}\n')
    with pytest.raises(DataError, match=r":1: per-item row lacks \['correct'\]"):
        read_run(bad)
    with pytest.raises(DataError, match="not found"):
        read_run(tmp_path / "nowhere")
    other = write_run(tmp_path / "other", make_rows([(True, [0.0, -1.0])], task="boolq"))
    with pytest.raises(DataError, match="share no"):
        pair_runs(read_run(runs[0]), read_run(other))


def test_split_is_disjoint_and_stable(pairs):
    a, b = split_pairs(pairs)
    assert {p.id for p in a}.isdisjoint({p.id for p in b}) and len(a) + len(b) == len(pairs)
    assert [p.id for p in split_pairs(pairs)[0]] == [p.id for p in a]
