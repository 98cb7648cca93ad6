"""The alpaca generation task through `evaluate`: a model is asked in its chat template, text metrics per item."""

from __future__ import annotations

import json

import pytest

from fslm.errors import InputError
from fslm.evaluate import evaluate
from fslm.evaluate.compare import compare_metrics, read_item_metrics
from fslm.evaluate.report import ITEM_METRICS
from fslm.evaluate.scoring import generation_verdict
from fslm.settings import reset_settings
from fslm.tasks import Item

RECORDS = [
    {"instruction": "Rewrite line 0.", "input": "", "output": "Line 0."},
    {"instruction": "Rewrite line 1.", "input": "line 1", "output": "Line 1."},
    {"instruction": "Rewrite line 2.", "input": "", "output": "Line 2."},
]  # fewer than ALPACA_TEST_TAIL: all of them are the tail


@pytest.fixture()
def alpaca_data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "alpaca").mkdir(parents=True)
    (root / "alpaca" / "random_9k.json").write_text(json.dumps(RECORDS))
    monkeypatch.setenv("FSLM_DATA_DIR", str(root))
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    reset_settings()
    yield root
    reset_settings()


def _item(gold: str) -> Item:
    return Item("alpaca/x", "alpaca", "Say it.", (), gold, "Say it.\n\nResponse:", ())


def test_free_text_is_correct_only_when_equal_but_for_whitespace_and_case():
    assert generation_verdict(_item("Line 1."), "  line   1.\n") == ("line   1.", True)
    assert generation_verdict(_item("Line 1."), "Line 1") == ("Line 1", False)
    assert generation_verdict(_item("Line 1."), "") == ("", False)


def test_a_model_answers_alpaca_in_its_chat_template_with_text_metrics(model_system, alpaca_data, tmp_path):
    out = tmp_path / "run"
    summary = evaluate(model_system, ["alpaca"], 3, out_dir=out, gen_max_tokens=4, metrics="em,rougeL")
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    expected = model_system.engine.render_chat([{"role": "user", "content": "Rewrite line 1.\n\nline 1"}])
    assert rows[1]["prompt"] == expected and rows[1]["gold"] == "Line 1."
    assert all(r["correct"] is False and r["acc"] == 0.0 for r in rows)  # a random tiny model writes no "Line 1."
    task = summary.tasks["alpaca"]
    assert task["metric"] == "exact_match" and set(task["metrics"]) == {"em", "rougeL"}
    per_item = read_item_metrics(out)["alpaca"]
    assert list(per_item["rougeL"]) == [r["id"] for r in rows]
    assert task["metrics"]["rougeL"]["mean"] == pytest.approx(sum(per_item["rougeL"].values()) / 3, abs=1e-6)
    same = compare_metrics(out, out, ["rougeL", "bleu"])  # bleu was not scored: left out
    assert list(same["alpaca"]) == ["rougeL"] and same["alpaca"]["rougeL"]["diff"] == 0.0
    evaluate(model_system, ["alpaca"], 3, out_dir=out, gen_max_tokens=4)  # a rerun without metrics drops the file
    assert not (out / ITEM_METRICS).exists()


def test_alpaca_is_zero_shot(model_system, alpaca_data):
    with pytest.raises(InputError, match="alpaca: a model is asked it zero-shot"):
        evaluate(model_system, ["alpaca"], 2, num_fewshot=1)
