"""The reproduction spec rebuilds everything itself: its smoke scale, on tiny random models, runs every step kind
(distill -> finetune, corpus -> index -> pairs -> finetune_pairs) and every system, comparison, the held-out
selection and the report, and a rerun does nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model  # tests/conftest.py (tests/ is on sys.path under pytest)

from fslm.experiment import load_spec, run_experiment
from fslm.tasks.splits import heldout_items, select_items

from .conftest import needs_data

SPEC = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments" / "fslm_repro.yaml"
ALPACA = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Which planet is largest?", "input": "", "output": "Jupiter."},
    {"instruction": "How many legs has a spider?", "input": "", "output": "Eight legs."},
    {"instruction": "At what temperature does water boil?", "input": "", "output": "100 degrees."},
    {"instruction": "What is two plus two?", "input": "", "output": "Four."},
    {"instruction": "Name the fox's colour.", "input": "the quick brown fox", "output": "Brown."},
    {"instruction": "What jumps over the lazy dog?", "input": "", "output": "The fox."},
]
FAST = {"rank": 2, "alpha": 4, "epochs": 1, "batch_size": 4, "threads": 1, "save_dtype": "float16"}


def tiny_model(folder: Path, seed: int) -> Path:
    """A tiny model whose context window admits the real benchmark prompts (its tokenizer needs many tokens)."""
    build_tiny_model(folder, seed=seed)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 16384
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def smoke_stack(student: Path) -> dict:
    """Shaped like the spec's stack (same stage names and `sees`), with stop strings a random model hits."""
    gen = {"max_new_tokens": 64, "stop": ["e", "a", "o"]}  # with teacher seed 3: all 6 records kept
    teacher = {
        "intent": "Request: {prompt}\nResponse: {answer}\nRestate the request.",
        "facts": "Question: {prompt}\nAnswer: {answer}\nList the facts.",
        "reasoning": "Question: {prompt}\nFacts: {facts}\nAnswer: {answer}\nExplain.",
    }
    sees = {"intent": ["prompt"], "facts": ["prompt"], "reasoning": ["prompt", "intent", "facts"]}
    stages = [
        {"name": n, "instruction": f"{n}.", "sees": sees[n], "generation": gen, "teacher_prompt": teacher[n]}
        for n in ("intent", "facts", "reasoning")
    ]
    answer = {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts", "reasoning"]}
    answer["generation"] = {"max_new_tokens": 16, "stop": ["\n\n"]}
    return {"name": "default", "base_model": str(student), "max_prompt_tokens": 100000, "stages": [*stages, answer]}


def retrieval_stack(student: Path) -> dict:
    """The spec's retrieval stack on the tiny student: related (retrieve) -> answer."""
    data = yaml.safe_load((SPEC.parent / "fslm_repro" / "retrieval" / "stack.yaml").read_text())
    data["base_model"] = str(student)
    data["max_prompt_tokens"] = 100000
    return data


@pytest.fixture()
def smoke_overrides(tmp_path, isolated_cache) -> dict:
    models = {name: tiny_model(tmp_path / name, seed) for name, seed in (("student", 0), ("teacher", 3), ("big", 2))}
    stack, retrieval, alpaca = tmp_path / "stack.yaml", tmp_path / "retrieval.yaml", tmp_path / "alpaca.json"
    stack.write_text(yaml.safe_dump(smoke_stack(models["student"])))
    retrieval.write_text(yaml.safe_dump(retrieval_stack(models["student"])))
    alpaca.write_text(json.dumps(ALPACA))
    return {
        "scale": "smoke",
        "out": str(tmp_path / "out"),
        "training.distilled.distill.stack": str(stack),
        "training.distilled.distill.teacher": str(models["teacher"]),
        "training.distilled.distill.data": str(alpaca),
        "training.trained.finetune.stack": str(stack),
        "training.trained.finetune.options": {**FAST, "max_length": 256},
        "training.corpus.corpus.alpaca": str(alpaca),
        "training.corpus-tail.corpus.alpaca": str(alpaca),
        "training.retrieval.index.stack": str(retrieval),
        "training.retrieval-tail.index.stack": str(retrieval),
        "training.scorer.finetune_pairs.options": {**FAST, "max_length": 4096},
        "systems.base.model": str(models["student"]),
        "systems.stack-promptonly.stack": str(stack),
        "systems.model-qwen2.5-coder-0.5b.model": str(models["big"]),
        "systems.model-gemma3-270m.model": str(models["big"]),
        "systems.model-qwen2.5-coder-0.5b-retrieval-tail-raw.patch.base_model": str(models["big"]),
    }


@needs_data
def test_the_smoke_scale_trains_every_step_and_evaluates_every_system(smoke_overrides, tmp_path):
    spec = load_spec(SPEC, smoke_overrides)
    t0 = time.perf_counter()
    result = run_experiment(SPEC, overrides=smoke_overrides, isolate=False)
    seconds = time.perf_counter() - t0
    out = tmp_path / "out"
    assert not result.failed
    trained = [key for key in result.ran if key.startswith("train:")]
    assert set(trained) == {f"train:{step}" for step in spec.training}
    for later, earlier in (("trained", "distilled"), ("retrieval-tail", "corpus-tail"), ("scorer", "scorer-pairs")):
        assert trained.index(f"train:{later}") > trained.index(f"train:{earlier}")
    assert {k for k in result.ran if k.startswith("eval:")} == {f"eval:{name}" for name in spec.systems}
    assert {k for k in result.ran if k.startswith("select:")} == {f"select:{n}" for n in spec.selection.systems}

    # distill -> finetune: one fp16 adapter per stage of the trained stack
    assert len((out / "train" / "distilled" / "distilled.jsonl").read_text().splitlines()) == 6
    trained_stack = yaml.safe_load((out / "train" / "trained" / "stack.yaml").read_text())
    assert [s["adapter"] for s in trained_stack["stages"]] == [
        f"adapters/{s}" for s in ("intent", "facts", "reasoning", "answer")
    ]

    # corpus -> index: the tail corpus holds more; the written stack reads its own index
    def passages(step: str) -> int:
        return len((out / "train" / step / "corpus.jsonl").read_text().splitlines())

    assert passages("corpus-tail") > passages("corpus") > 0
    tail = yaml.safe_load((out / "train" / "retrieval-tail" / "stack.yaml").read_text())
    assert tail["stages"][0]["retrieve"]["index"] == "index"
    assert (out / "train" / "retrieval-tail" / "index" / "manifest.json").is_file()

    # pairs: choice questions only, never an evaluated item nor the head of a held-out pool
    rows = [json.loads(line) for line in (out / "train" / "scorer-pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["task"] for r in rows} == {"arc_challenge", "boolq"}
    for task in ("arc_challenge", "boolq"):
        kept_out = {i.id for i in select_items(task, 300)} | {i.id for i in heldout_items(task)[:100]}
        assert not kept_out & {r["id"] for r in rows if r["task"] == task}
    assert all("Related solved questions" in r["context"] and r["continuation"] for r in rows)

    # pairs -> finetune_pairs: the tail stack with an adapter on its answer stage only
    scorer = yaml.safe_load((out / "train" / "scorer" / "stack.yaml").read_text())
    assert [("adapter" in s) for s in scorer["stages"]] == [False, True]

    # every system evaluated on 2 items of each of the 3 smoke tasks; the variant on the bigger model is a file
    for name in spec.systems:
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        assert summary["n_items"] == 6, name
    reader = yaml.safe_load((out / "stacks" / "model-qwen2.5-coder-0.5b-retrieval-tail-raw.yaml").read_text())
    assert (
        reader["base_model"] == smoke_overrides["systems.model-qwen2.5-coder-0.5b-retrieval-tail-raw.patch.base_model"]
    )

    results = json.loads((out / "results.json").read_text())
    assert len(results["comparisons"]) == len(spec.comparisons) == 28
    assert results["selection"]["chosen"] == "stack-trained"
    assert (out / "RESULTS.md").read_text().startswith("# FSLM reproduction, smoke scale")
    assert seconds < 120, f"the smoke scale took {seconds:.0f} s"

    assert run_experiment(SPEC, overrides=smoke_overrides, isolate=False).ran == []  # rerun: everything is done
