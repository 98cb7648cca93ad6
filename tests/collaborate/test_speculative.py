"""Speculative decoding keeps the target's greedy output exactly; only the speed changes."""

from __future__ import annotations

import pytest

from fslm.collaborate.speculative import AssistedEngine, compare_with_plain, same_tokenizer
from fslm.config import parse_stack_config
from fslm.engine import GenerationParams
from fslm.errors import InputError
from fslm.stack import Stack

QUESTIONS = ["What is the capital of France?", "Which planet is largest?", "Two plus two is"]
PARAMS = GenerationParams(max_new_tokens=16)


@pytest.fixture(scope="module")
def texts(tiny_engine):
    return [tiny_engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_same_tokenizer_detection(tiny_engine, draft_engine, other_tok_engine):
    assert same_tokenizer(tiny_engine.tokenizer, draft_engine.tokenizer)
    assert not same_tokenizer(tiny_engine.tokenizer, other_tok_engine.tokenizer)


@pytest.mark.parametrize("draft_tokens", [None, 2])
def test_draft_model_output_is_identical_to_target_alone(tiny_engine, draft_engine, texts, draft_tokens):
    assisted = AssistedEngine(tiny_engine, draft_engine, draft_tokens=draft_tokens)
    assert not assisted.universal
    report, plain, fast = compare_with_plain(assisted, texts, PARAMS)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert report.identical and report.mismatches == []
    assert all(g.tokens_out == p.tokens_out for g, p in zip(fast, plain))
    assert sum(g.drafted for g in fast) > 0  # the draft really proposed tokens


def test_self_draft_is_accepted(tiny_engine, tiny_model_dir, texts):
    """A draft with the target's own weights must be accepted nearly always: checks the acceptance counter."""
    from fslm.engine import load_engine

    twin = load_engine(str(tiny_model_dir))
    gens = AssistedEngine(tiny_engine, twin, draft_tokens=4).generate(texts, PARAMS)
    drafted, accepted = sum(g.drafted for g in gens), sum(g.accepted for g in gens)
    assert drafted > 0 and accepted / drafted > 0.9


def test_different_tokenizers_use_universal_assisted_generation(tiny_engine, other_tok_engine, texts):
    assisted = AssistedEngine(tiny_engine, other_tok_engine, draft_tokens=3)
    assert assisted.universal
    report, plain, fast = compare_with_plain(assisted, texts, PARAMS)
    assert report.identical, (report.mismatches, [g.text for g in plain], [g.text for g in fast])


def test_prompt_lookup_identical_and_accepts_copies(tiny_engine):
    # A prompt whose greedy continuation repeats itself gives prompt lookup something to copy.
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "Two plus two is four. Two plus two is four. Two"]
    assisted = AssistedEngine(tiny_engine, prompt_lookup=5)
    report, plain, fast = compare_with_plain(assisted, texts, PARAMS)
    assert report.identical
    assert report.draft == "prompt-lookup(5)"


def test_stack_runs_on_assisted_engine_with_identical_trace(tiny_engine, tiny_model_dir):
    cfg = parse_stack_config(
        {
            "name": "tiny",
            "base_model": str(tiny_model_dir),
            "stages": [
                {
                    "name": "intent",
                    "instruction": "Restate.",
                    "generation": {"max_new_tokens": 12, "no_repeat_ngram_size": 3},
                },
                {
                    "name": "answer",
                    "instruction": "Answer.",
                    "sees": ["prompt", "intent"],
                    "generation": {"max_new_tokens": 12},
                },
            ],
        }
    )
    plain = Stack(cfg, tiny_engine).run("What is the capital of France?")
    fast = Stack(cfg, AssistedEngine(tiny_engine, prompt_lookup=4)).run("What is the capital of France?")
    assert [r.output for r in fast.trace] == [r.output for r in plain.trace]
    assert [r.input for r in fast.trace] == [r.input for r in plain.trace]


def test_bad_drafter_configuration(tiny_engine, draft_engine):
    with pytest.raises(InputError, match="draft model or prompt_lookup"):
        AssistedEngine(tiny_engine)
    with pytest.raises(InputError, match="not both"):
        AssistedEngine(tiny_engine, draft_engine, prompt_lookup=3)
    with pytest.raises(InputError, match="draft_tokens"):
        AssistedEngine(tiny_engine, draft_engine, draft_tokens=0)
