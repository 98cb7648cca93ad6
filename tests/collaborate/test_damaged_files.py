"""Saved cascade/router files and the runs they read, truncated or garbled: one DataError naming file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fslm.collaborate.cascade import Calibration
from fslm.collaborate.route import META_FILE, WEIGHTS_FILE, Router
from fslm.collaborate.runs import read_run
from fslm.errors import DataError, InputError
from fslm.evaluate.store import read_signals

from .conftest import make_rows, write_run

CALIBRATION = {
    "signal": "margin",
    "threshold": 0.4,
    "target": 0.95,
    "small_acc": 0.5,
    "large_acc": 0.7,
    "acc": 0.68,
    "compute_share": 0.6,
    "escalation_rate": 0.3,
    "n": 20,
    "met": True,
}


def test_calibration_truncated_or_garbled(tmp_path):
    path = tmp_path / "cal.json"
    text = json.dumps(CALIBRATION, indent=2)
    path.write_text(text)
    assert Calibration.load(path).threshold == 0.4
    path.write_text(text[:-20])
    with pytest.raises(DataError, match=r"cal.json: not valid JSON \(.*at line \d+, column \d+\)"):
        Calibration.load(path)
    path.write_bytes(text.encode().replace(b'"margin"', b'"m\xe9"'))
    with pytest.raises(DataError, match=r"cal.json: line 2, column \d+: not UTF-8"):
        Calibration.load(path)
    path.write_text(json.dumps([CALIBRATION]))
    with pytest.raises(DataError, match="cal.json: expected a JSON object, got list"):
        Calibration.load(path)
    path.write_text(json.dumps({**CALIBRATION, "threshold": "0.4"}))
    with pytest.raises(DataError, match="'threshold' is '0.4', not a number"):
        Calibration.load(path)
    path.write_text(json.dumps({**CALIBRATION, "threshold": 1.4}))
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        Calibration.load(path)


@pytest.fixture()
def router_folder(tmp_path):
    """A saved router; training one needs the embedder, loading one does not."""
    return Router(np.linspace(-1, 1, 8), 0.25, 0.5, {"trained_on": "x"}).save(tmp_path / "router")


def test_router_roundtrip(router_folder):
    loaded = Router.load(router_folder)
    assert loaded.threshold == 0.5 and loaded.meta == {"trained_on": "x"} and loaded.weight.shape == (8,)


def test_router_json_truncated_or_garbled(router_folder):
    meta = router_folder / META_FILE
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=rf"{META_FILE}: not valid JSON \(.*line \d+, column \d+\)"):
        Router.load(router_folder)
    meta.write_text(text.replace('"threshold": 0.5', '"threshold": null'))
    with pytest.raises(DataError, match=rf"{META_FILE}: 'threshold' is missing or not a number"):
        Router.load(router_folder)


def test_router_weights_truncated(router_folder):
    weights = router_folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(DataError, match=rf"{WEIGHTS_FILE}: not a router weights file"):
        Router.load(router_folder)


def test_run_summary_truncated(tmp_path):
    folder = write_run(tmp_path / "run", make_rows([(True, [0.0, -1.0])]), {"system": "model:x", "params": 10})
    assert read_run(folder).system == "model:x"
    (folder / "summary.json").write_text('{"system": "model:x", "par')
    with pytest.raises(DataError, match=r"summary.json: not valid JSON \(Unterminated string"):
        read_run(folder)


def test_signals_truncated_or_garbled(tmp_path):
    path = tmp_path / "signals.jsonl"
    good = json.dumps({"task": "t", "id": "1", "verify": 0.5}) + "\n"
    path.write_text(good + '{"task": "t", "id": "2", "verify": 0.\n' + good)
    with pytest.raises(DataError, match=r"signals.jsonl:2: expected a JSON object .* \(Expecting"):
        read_signals(path)
    path.write_bytes(good.encode() + b'{"task": "t\xff"}\n')
    with pytest.raises(DataError, match=r"signals.jsonl: line 2, column 12: not UTF-8"):
        read_signals(path)
    path.write_text(good + "[1, 2]\n")
    with pytest.raises(DataError, match=r"signals.jsonl:2: expected a JSON object with 'task', 'id'"):
        read_signals(path)
