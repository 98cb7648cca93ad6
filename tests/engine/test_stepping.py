"""Logits sessions of the hf engine: cached steps equal a fresh prefill, rows leave cleanly, adapters stay per
session, stats count the work."""

from __future__ import annotations

import pytest
import torch

from fslm.engine import load_engine
from fslm.engine.stepping import LogitsSession, StepLogitsEngine, require_step_logits
from fslm.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_adapters):
    """An engine of this module's own: adapters are added to it."""
    loaded = load_engine(str(tiny_model_dir))
    loaded.add_adapter("intent", str(tiny_adapters["intent"]))
    return loaded


def test_steps_on_the_cache_equal_a_fresh_prefill(engine):
    prompts = [engine.encode("What is the capital of France?"), engine.encode("Two plus two")]
    session = engine.logits_session(prompts)
    assert isinstance(session, LogitsSession) and session.rows == 2
    history = [list(p) for p in prompts]
    for _ in range(4):
        picked = session.logits.argmax(dim=-1)
        for row, token in enumerate(picked.tolist()):
            history[row].append(token)
        session.advance(picked)
    fresh = engine.logits_session(history)
    assert torch.allclose(session.logits, fresh.logits, atol=1e-4, rtol=1e-4)
    session.keep([1])  # the first row leaves; the second goes on as if alone
    session.advance([7])
    alone = engine.logits_session([history[1] + [7]])
    assert session.rows == 1 and torch.allclose(session.logits, alone.logits, atol=1e-4, rtol=1e-4)


def test_sessions_with_and_without_an_adapter_interleave(engine):
    ids = [engine.encode("Which planet is largest?")]
    plain, tuned = engine.logits_session(ids), engine.logits_session(ids, "intent")
    assert not torch.allclose(plain.logits, tuned.logits)
    for _ in range(3):
        plain.advance([5])
        tuned.advance([5])
    again_plain = engine.logits_session([ids[0] + [5, 5, 5]])
    again_tuned = engine.logits_session([ids[0] + [5, 5, 5]], "intent")
    assert torch.allclose(plain.logits, again_plain.logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(tuned.logits, again_tuned.logits, atol=1e-4, rtol=1e-4)


def test_stats_and_refusals(engine):
    before = (engine.stats.calls, engine.stats.forward_tokens)
    session = engine.logits_session([[5, 6, 7], [8, 9]])
    session.advance([1, 2])
    assert (engine.stats.calls, engine.stats.forward_tokens) == (before[0] + 1, before[1] + 5 + 2)
    with pytest.raises(ValueError, match="one token per live row"):
        session.advance([1])
    with pytest.raises(ConfigError, match="not loaded"):
        engine.logits_session([[5]], "nope")
    with pytest.raises(InputError, match="at least one token"):
        engine.logits_session([[5], []])
    assert isinstance(engine, StepLogitsEngine) and require_step_logits(engine, "x") is engine
    with pytest.raises(InputError, match="x runs on each model's next-token logits.*--engine hf"):
        require_step_logits(object(), "x")
