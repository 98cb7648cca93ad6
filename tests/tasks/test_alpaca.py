"""The alpaca task: the tail of a (tiny) Alpaca file as generation items, and the rule that keeps training off it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fslm.evaluate.metrics import reference_text
from fslm.settings import reset_settings
from fslm.tasks import get_task, list_tasks, load_task
from fslm.tasks.alpaca import ALPACA_TEST_TAIL, alpaca_head_size, training_overlap
from fslm.tasks.splits import parse_tasks

HEAD = 7  # unique records before the evaluated tail


def write_alpaca(root: Path) -> list[dict]:
    """HEAD + ALPACA_TEST_TAIL unique records, one exact duplicate in the head (dropped, so it does not shift the
    tail) and one tail record without an output (no item)."""
    records = [{"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}."} for i in range(HEAD)]
    records.append(dict(records[0]))  # a duplicate
    tail = [
        {"instruction": f"Rewrite line {i}.", "input": f"line {i}" if i % 2 else "", "output": f"Line {i}."}
        for i in range(ALPACA_TEST_TAIL)
    ]
    tail[3]["output"] = ""
    (root / "alpaca").mkdir(parents=True)
    (root / "alpaca" / "random_9k.json").write_text(json.dumps(records + tail))
    return tail


@pytest.fixture()
def alpaca_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    tail = write_alpaca(root)
    monkeypatch.setenv("FSLM_DATA_DIR", str(root))
    reset_settings()
    yield tail
    reset_settings()


def test_the_test_split_is_the_tail_in_file_order(alpaca_dir):
    tail = alpaca_dir
    items = load_task("alpaca")
    assert len(items) == ALPACA_TEST_TAIL - 1  # the record without an output is left out
    assert [it.gold for it in items[:3]] == ["Line 0.", "Line 1.", "Line 2."] and items[3].gold == "Line 4."
    first, second = items[0], items[1]
    assert first.question == "Rewrite line 0." and second.question == "Rewrite line 1.\n\nline 1"
    assert second.choices == () and second.continuations == () and second.id.startswith("alpaca/")
    assert reference_text(second) == "Line 1." and items[-1].gold == tail[-1]["output"]
    assert len({it.id for it in items}) == len(items)
    assert load_task("alpaca", limit=2) == items[:2]


def test_training_may_read_the_head_only(alpaca_dir):
    assert alpaca_head_size() == HEAD
    assert training_overlap(None, HEAD) is None
    assert f"set limit to at most {HEAD}" in training_overlap(None, HEAD + 1)
    assert "reads every record" in training_overlap(None, None)
    assert training_overlap("/elsewhere/other.json", None) is None  # another file: not the evaluated one


def test_alpaca_is_opt_in():
    spec = get_task("alpaca")
    assert spec.kind == "generate" and spec.fewshot_split is None and str(ALPACA_TEST_TAIL) in spec.description
    assert "alpaca" not in list_tasks() and "alpaca" in list_tasks(every=True)
    assert "alpaca" not in parse_tasks("all") and parse_tasks("alpaca") == ["alpaca"]
