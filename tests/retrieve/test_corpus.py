"""Corpus: solved train/dev questions and Alpaca records as passages, never an evaluated or held-out item."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.errors import FslmError, InputError
from fslm.retrieve import read_passages
from fslm.retrieve.corpus import Reserved, build_corpus, corpus_splits, default_sources, item_passage
from fslm.settings import get_settings
from fslm.tasks import load_task, normalize_text
from fslm.tasks.splits import heldout_items

needs_data = pytest.mark.skipif(
    not (get_settings().data_dir / "arc_challenge").is_dir(), reason="shared benchmark data not found"
)


def test_sources_are_the_tasks_with_a_train_or_dev_split():
    assert corpus_splits("arc_challenge") == ["validation"] and corpus_splits("boolq") == []
    assert default_sources()[-1] == "alpaca" and "boolq" not in default_sources()
    with pytest.raises(InputError, match="only its evaluation split"):
        build_corpus(["boolq"], reserved=Reserved())
    with pytest.raises(FslmError, match="unknown task"):
        build_corpus(["nope"], reserved=Reserved())


def test_alpaca_records_become_passages_and_reserved_questions_are_dropped(tmp_path):
    records = [
        {"instruction": "Name a planet.", "input": "", "output": "Jupiter."},
        {"instruction": "What is two plus two?", "input": "", "output": "Four."},
        {"instruction": "Write a poem.", "input": "", "output": ""},  # no answer: not a passage
        {"instruction": "Name a  PLANET.", "input": "", "output": "Jupiter."},
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records))
    reserved = Reserved(questions={normalize_text("what is two plus two?")})
    passages, stats = build_corpus(["alpaca"], alpaca_path=path, reserved=reserved)
    assert [p.text for p in passages] == ["Name a planet.\nAnswer: Jupiter."]
    assert stats["alpaca"].to_dict() == {"read": 3, "kept": 1, "dropped_reserved": 1, "dropped_duplicate": 1}


@needs_data
def test_no_passage_shares_an_id_or_question_with_evaluation_or_held_out_items():
    passages, stats = build_corpus(["arc_challenge", "mmlu"], heldout_keep=20)
    for task in ("arc_challenge", "mmlu"):
        st = stats[task]
        assert st.read == st.kept + st.dropped_reserved + st.dropped_duplicate
        assert st.dropped_reserved >= 20  # at least the held-out head, which comes from this very split
        judged = load_task(task) + heldout_items(task)[:20]
        ids = {it.id for it in judged}
        questions = {normalize_text(it.question) for it in judged}
        mine = [p for p in passages if p.id.startswith(f"{task}/")]
        assert len(mine) == st.kept
        assert not [p.id for p in mine if p.id in ids]
        assert not [p.id for p in mine if normalize_text(p.text.split("\nAnswer:")[0]).split(") ", 1)[-1] in questions]


@needs_data
def test_a_passage_states_the_gold_answer():
    item = load_task("arc_challenge", split="validation", limit=1)[0]
    passage = item_passage(item)
    assert passage.text == f"{item.question.strip()}\nAnswer: {item.choices[item.gold].strip()}"
    gsm = load_task("gsm8k", split="train", limit=1)[0]
    assert item_passage(gsm).text.endswith(gsm.meta["solution"].strip())


@needs_data
def test_cli_corpus_index_search(tmp_path, monkeypatch):
    runner = CliRunner()
    corpus = tmp_path / "c.jsonl"
    res = runner.invoke(app, ["retrieve", "corpus", "--out", str(corpus), "--source", "arc_challenge", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["sources"]["arc_challenge"]["kept"] == len(read_passages(corpus)) > 0
    res = runner.invoke(app, ["retrieve", "index", str(corpus), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    first = read_passages(corpus)[0]
    res = runner.invoke(
        app, ["retrieve", "search", str(tmp_path / "idx"), first.text.split("\n")[0], "-k", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)[0]["hits"]
    assert hits[0]["id"] == first.id and len(hits) <= 2
    res = runner.invoke(app, ["retrieve", "search", str(tmp_path), "x"])
    assert res.exit_code != 0 and "not an fslm retrieval index" in res.output


@needs_data
def test_eval_tail_adds_only_items_past_the_evaluated_ones():
    from fslm.tasks.splits import select_items

    passages, stats = build_corpus(["winogrande"], eval_tail=300, heldout_keep=20)
    evaluated = select_items("winogrande", 300)
    held = heldout_items("winogrande")[:20]
    ids = {p.id for p in passages}
    assert stats["winogrande"].kept == len(passages) > 0
    assert not ids & {it.id for it in evaluated + held}
    assert ids <= {it.id for it in select_items("winogrande", None)[300:]}
    with pytest.raises(InputError, match="eval_tail must be >= 1"):
        build_corpus(["winogrande"], eval_tail=0, reserved=Reserved())
