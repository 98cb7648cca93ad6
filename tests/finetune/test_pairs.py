"""Pair training (`finetune_pairs`, `fslm finetune --pairs`): the adapter learns the log-probabilities it is scored by."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from fslm.cli import app
from fslm.config import load_stack_config
from fslm.errors import ConfigError, DataError
from fslm.finetune import TrainOptions, finetune_pairs, pair_examples, read_pairs

from .conftest import WORDS

FAST = dict(epochs=8, batch_size=4, lr=3e-3, rank=8, alpha=16, save_every=10, threads=1)


def pair_rows(n: int) -> list[dict]:
    """A raw-context pattern the base model cannot know: 'Digit a in words:' -> ' WORDS[a]'."""
    return [
        {"id": f"p{i}", "context": f"Notes: item {i}\n\nDigit {i % 10} in words:", "continuation": f" {WORDS[i % 10]}"}
        for i in range(n)
    ]


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pair_examples_split_tokens_as_score_does(fresh_engine):
    rows = pair_rows(4)
    data = pair_examples("answer", fresh_engine, rows, max_length=512)
    assert [e.record_id for e in data.examples] == ["p0", "p1", "p2", "p3"] and data.skipped_too_long == 0
    for ex, row in zip(data.examples, rows, strict=True):
        ctx, cont = fresh_engine.encode_pair(row["context"], row["continuation"])
        assert (list(ex.prompt_ids), list(ex.target_ids)) == (ctx, cont)  # the loss falls on the continuation only
        assert (
            fresh_engine.tokenizer.decode(list(ex.prompt_ids) + list(ex.target_ids))
            == row["context"] + row["continuation"]
        )
    longest = max(e.length for e in data.examples)
    short = pair_examples("answer", fresh_engine, rows, max_length=longest - 1)
    assert short.skipped_too_long == sum(e.length == longest for e in data.examples) and short.skipped_too_long >= 1


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "context": "c"}\n', "line 1: missing or empty 'continuation'"),
        ('{"id": "a", "context": "c", "continuation": "x"}\n[1]\n', "line 2: expected a JSON object"),
        ('{"id": "a"\n', "line 1: not valid JSON"),
        ("\n", "no (context, continuation) pairs"),
    ],
)
def test_bad_pair_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(path)


def test_finetune_pairs_raises_the_gold_continuations_score(stack_file, fresh_engine, tmp_path):
    rows = pair_rows(20)
    write_rows(tmp_path / "pairs.jsonl", rows)
    before = fresh_engine.score([r["context"] for r in rows], [r["continuation"] for r in rows])
    report = finetune_pairs(
        stack_file, "answer", tmp_path / "pairs.jsonl", tmp_path / "out", TrainOptions(**FAST), engine=fresh_engine
    )
    assert list(report.stages) == ["answer"] and report.stages["answer"]["examples"] == 20
    assert report.stages["answer"]["final_loss"] < report.stages["answer"]["first_loss"]
    cfg = load_stack_config(tmp_path / "out" / "stack.yaml")
    assert [s.adapter for s in cfg.stages] == [None, None, "adapters/answer"]  # only the named stage is trained
    fresh_engine.add_adapter("answer", str(cfg.adapter_path(cfg.stages[-1])))
    after = fresh_engine.score([r["context"] for r in rows], [r["continuation"] for r in rows], adapter="answer")
    gain = sum(a.logprob - b.logprob for a, b in zip(after, before, strict=True)) / len(rows)
    assert gain > 1.0, gain  # nats per continuation: it learned the pattern it is scored on
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["kind"] == "pairs" and log["stages"]["answer"]["summary"]["examples"] == 20
    again = finetune_pairs(
        stack_file, "answer", tmp_path / "pairs.jsonl", tmp_path / "out", TrainOptions(**FAST), engine=fresh_engine
    )
    assert again.stages["answer"]["skipped"] == "already trained"


def test_finetune_pairs_refuses_unknown_stages(stack_file, fresh_engine, tmp_path):
    write_rows(tmp_path / "pairs.jsonl", pair_rows(2))
    with pytest.raises(ConfigError, match="not a stage of 'tiny'"):
        finetune_pairs(stack_file, "verdict", tmp_path / "pairs.jsonl", tmp_path / "out", engine=fresh_engine)


def test_cli_pairs_needs_one_stage(stack_file, tmp_path):
    write_rows(tmp_path / "pairs.jsonl", pair_rows(2))
    args = [
        "finetune",
        "--stack",
        str(stack_file),
        "--data",
        str(tmp_path / "pairs.jsonl"),
        "--out",
        str(tmp_path / "o"),
        "--pairs",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--pairs trains one stage" in result.output, result.output
    assert yaml.safe_load(stack_file.read_text())["name"] == "tiny"
