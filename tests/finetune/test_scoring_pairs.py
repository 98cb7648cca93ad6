"""Building raw-scoring pairs: the gold option after lm-eval's raw context, from items no evaluation or selection reads."""

from __future__ import annotations

import json

import pytest

from fslm.config import parse_stack_config
from fslm.finetune.pairs import build_pairs, pick_questions, write_scoring_pairs
from fslm.settings import get_settings
from fslm.tasks import build_context
from fslm.tasks.splits import heldout_items, select_items

pytestmark = pytest.mark.skipif(
    not (get_settings().data_dir / "arc_challenge").is_dir(), reason="shared benchmark data not found"
)
SCORER = {"name": "s", "stages": [{"name": "answer", "score": {"format": "raw"}, "final": True}]}


def test_pairs_without_a_retrieve_stage_are_the_raw_context_and_the_gold_option():
    items = pick_questions(6, ["arc_challenge", "piqa"], seed=3)
    rows = build_pairs(parse_stack_config(SCORER), items)
    assert len(rows) == len(items) == 6
    for item, row in zip(items, rows, strict=True):
        gold = int(item.gold)
        assert row["context"] == build_context(item, ())  # no notes line: nothing retrieved
        assert row["continuation"] == item.continuations[gold] and row["id"] == item.id


def test_no_pair_is_an_evaluated_or_held_out_item(tmp_path):
    out = tmp_path / "pairs.jsonl"
    report = write_scoring_pairs(parse_stack_config(SCORER), out, 40, ["arc_easy", "boolq"], seed=0)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert report.pairs == len(ids) == 40 and len(set(ids)) == 40
    for task in ("arc_easy", "boolq"):
        evaluated = {i.id for i in select_items(task, 300)}
        held = {i.id for i in heldout_items(task)[:100]}
        assert not (set(ids) & (evaluated | held))
    again = tmp_path / "again.jsonl"
    write_scoring_pairs(parse_stack_config(SCORER), again, 40, ["arc_easy", "boolq"], seed=0)
    assert again.read_bytes() == out.read_bytes()  # the same data, the same draw
