"""The stage cache: a stage asked the same question with the same weights is generated once, across stacks and runs."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import make_lora_adapter

from fslm.config import parse_stack_config, without_stage
from fslm.engine import load_engine
from fslm.errors import DataError, InputError
from fslm.stack import Stack
from fslm.stack_cache import StageCache

CFG = {
    "name": "tiny",
    "base_model": "tiny",
    "max_prompt_tokens": 64,
    "stages": [
        {"name": "intent", "instruction": "Restate.", "sees": ["prompt"], "generation": {"max_new_tokens": 6}},
        {"name": "facts", "instruction": "Facts.", "sees": ["prompt"], "generation": {"max_new_tokens": 6}},
        {
            "name": "reasoning",
            "instruction": "Reason.",
            "sees": ["prompt", "intent", "facts"],
            "generation": {"max_new_tokens": 6},
        },
        {
            "name": "answer",
            "instruction": "Answer.",
            "sees": ["prompt", "facts", "reasoning"],
            "generation": {"max_new_tokens": 8},
        },
    ],
}
PROMPTS = ["What is the capital of France?", "Two plus two?", "Which planet is largest?"]


class CountingEngine:
    """The tiny engine, counting the texts each generate call is asked for."""

    def __init__(self, inner):
        self.inner, self.generated = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, texts, params, adapter=None):
        self.generated.append(list(texts))
        return self.inner.generate(texts, params, adapter=adapter)


def traces(results):
    return [
        [(r.stage, r.input, r.output, r.tokens_in, r.tokens_out, r.seconds, r.finish_reason) for r in res.trace]
        for res in results
    ]


def test_a_rerun_generates_nothing_and_returns_the_same_trace(tiny_engine, tmp_path):
    cfg = parse_stack_config(CFG)
    with StageCache(tmp_path / "stages.sqlite") as cache:
        first = Stack(cfg, CountingEngine(tiny_engine), cache=cache).run_batch(PROMPTS)
        assert (cache.hits, cache.misses, len(cache)) == (0, 12, 12)
    with StageCache(tmp_path / "stages.sqlite") as cache:  # a new process: the file is the cache
        engine = CountingEngine(tiny_engine)
        again = Stack(cfg, engine, cache=cache).run_batch(PROMPTS)
        assert engine.generated == [] and (cache.hits, cache.misses) == (12, 0)
    assert traces(again) == traces(first)  # costs are those measured when generated
    plain = Stack(cfg, tiny_engine).run_batch(PROMPTS)  # and the texts are what an uncached stack writes
    assert [[r.output for r in res.trace] for res in first] == [[r.output for r in res.trace] for res in plain]


def test_a_text_copy_carries_the_cache_to_another_machine(tiny_engine, tmp_path):
    """export_jsonl / import_jsonl: the SQLite file stays behind with the machine; the JSONL copy travels (in git)."""
    cfg = parse_stack_config(CFG)
    copy = tmp_path / "out" / "stage_outputs.jsonl"
    with StageCache(tmp_path / "old.sqlite") as cache:
        first = Stack(cfg, tiny_engine, cache=cache).run_batch(PROMPTS)
        assert cache.export_jsonl(copy) == 12 and cache.export_jsonl(copy) == 0  # appends only what the file lacks
    with open(copy, "ab") as fh:
        fh.write(b'{"key": "torn')  # an export killed mid-line
    with StageCache(tmp_path / "new.sqlite") as cache:
        assert cache.import_jsonl(copy) == 12 and cache.import_jsonl(copy) == 0
        engine = CountingEngine(tiny_engine)
        again = Stack(cfg, engine, cache=cache).run_batch(PROMPTS)
        assert engine.generated == [] and traces(again) == traces(first)  # same texts, same recorded costs
        assert cache.export_jsonl(copy) == 0 and copy.read_bytes().endswith(b"\n")  # the torn tail is dropped
    assert len(copy.read_text().splitlines()) == 12
    assert StageCache(tmp_path / "none.sqlite").import_jsonl(tmp_path / "missing.jsonl") == 0


def test_a_text_copy_with_a_bad_line_names_the_file_and_line(tmp_path):
    bad = tmp_path / "stage_outputs.jsonl"
    bad.write_text('{"key": "k", "value": {"text": "x"}}\n')
    with (
        StageCache(tmp_path / "c.sqlite") as cache,
        pytest.raises(DataError, match=r"stage_outputs.jsonl:1: not a stage cache entry"),
    ):
        cache.import_jsonl(bad)


def test_an_ablation_reuses_the_stages_whose_inputs_it_shares(tiny_engine, tmp_path):
    cfg = parse_stack_config(CFG)
    with StageCache(tmp_path / "stages.sqlite") as cache:
        Stack(cfg, tiny_engine, cache=cache).run_batch(PROMPTS)
        engine = CountingEngine(tiny_engine)
        hits = cache.hits
        ablated = Stack(without_stage(cfg, "reasoning"), engine, cache=cache).run_batch(PROMPTS)
        # intent and facts: the same inputs as in the full stack; the answer stage now sees other text
        assert cache.hits - hits == 6 and len(engine.generated) == 1 and len(engine.generated[0]) == 3
        assert all("Reason" not in text for text in engine.generated[0])
    assert [r.stage for r in ablated[0].trace] == ["intent", "facts", "answer"]


def test_other_adapter_weights_or_sampling_never_hit(tiny_model_dir, tmp_path):
    cfg = dict(CFG, base_model=str(tiny_model_dir))
    first = make_lora_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    second = make_lora_adapter(tiny_model_dir, tmp_path / "a2", seed=2)

    def stack_with(adapter, cache, temperature=0.0):
        stages = [dict(s) for s in cfg["stages"][:1]] + [dict(cfg["stages"][3], sees=["prompt"])]
        stages[0]["adapter"] = str(adapter)
        stages[0]["generation"] = {"max_new_tokens": 6, "temperature": temperature}
        return Stack(parse_stack_config(dict(cfg, stages=stages)), load_engine(str(tiny_model_dir)), cache=cache)

    with StageCache(tmp_path / "stages.sqlite") as cache:
        stack_with(first, cache).run_batch(PROMPTS)
        assert cache.misses == 6
        stack_with(first, cache).run_batch(PROMPTS)
        assert cache.hits == 6
        stack_with(second, cache).run_batch(PROMPTS)  # same path layout, other weights: the intent stage is a miss
        assert (cache.hits, cache.misses) == (9, 9)
        stack_with(first, cache, temperature=0.7).run_batch(PROMPTS)  # sampled: not looked up, not stored
        assert (cache.hits, cache.misses) == (12, 9) and len(cache) == 9


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    bad = tmp_path / "stages.sqlite"
    bad.write_text("not a database, a text file that happens to be here\n" * 20)
    with pytest.raises(DataError, match="not a usable stage cache"):
        StageCache(bad)


def test_evaluate_records_reuse_in_run_json(tiny_model_dir, tmp_path):
    from fslm.evaluate import evaluate, load_system
    from fslm.settings import get_settings

    if not (get_settings().data_dir / "arc_easy").is_dir():
        pytest.skip("benchmark data dir not present (set FSLM_DATA_DIR)")
    stack_yaml = tmp_path / "stack.yaml"
    stack_yaml.write_text(json.dumps(dict(CFG, base_model=str(tiny_model_dir), max_prompt_tokens=100000)))
    cache = tmp_path / "stages.sqlite"
    first = evaluate(load_system(stack=stack_yaml, stage_cache=cache), "arc_easy", 3, out_dir=tmp_path / "a")
    second = evaluate(load_system(stack=stack_yaml, stage_cache=cache), "arc_easy", 3, out_dir=tmp_path / "b")
    sessions = [json.loads((tmp_path / run / "run.json").read_text())["sessions"][-1] for run in ("a", "b")]
    assert sessions[0]["stage_cache"]["hits"] == 0 and sessions[0]["stage_cache"]["misses"] == 9
    assert sessions[1]["stage_cache"] == {"path": str(cache), "hits": 9, "misses": 0}
    assert [r["stages"] for r in first.rows] == [r["stages"] for r in second.rows]
    assert [r["choice_scores"] for r in first.rows] == [r["choice_scores"] for r in second.rows]
    assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM stage_outputs").fetchone()[0] == 9
    with pytest.raises(InputError, match="--stack systems only"):
        load_system(model=str(tiny_model_dir), stage_cache=cache)
