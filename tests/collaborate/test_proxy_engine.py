"""Proxy-tuned option scoring: the identities (alpha=0, tuned==base give the large model's own scores), a full-sequence
recomputation of the fused log-likelihoods, batching and order, cost accounting, the loader and refusals."""

from __future__ import annotations

import pytest
import torch

from fslm.collaborate.proxy import Expert, ProxyTuneParams, fused_scores, proxy_generate
from fslm.collaborate.proxy_engine import ProxyEngine, load_proxy_engine
from fslm.engine import Engine, GenerationParams, load_engine
from fslm.errors import InputError
from fslm.models import adapter_params

CONTEXTS = [
    "Question: Which planet is largest?\nAnswer:",
    "Question: Which planet is largest?\nAnswer:",
    "What is the capital of France? The capital is",
    "Two plus two is",
    "",  # lm-eval's empty context: the start token alone
    "A spider has eight legs. Water boils at 100 degrees. Question: how many legs?\nAnswer:",
]
CONTINUATIONS = [" Jupiter", " the quick brown fox jumps", " Paris", " four.", "Restate the question.", " eight"]


@pytest.fixture(scope="module")
def small(tiny_draft_dir, tiny_adapters):
    """The small model (same tokenizer as tiny_engine) with a random adapter, "tuned"; this module's own engine."""
    engine = load_engine(str(tiny_draft_dir))
    engine.add_adapter("tuned", str(tiny_adapters["intent"]))
    return engine


def close(a, b, tol: float = 1e-4) -> bool:
    return all(abs(x.logprob - y.logprob) <= tol * max(1.0, abs(y.logprob)) for x, y in zip(a, b, strict=True))


def greedy_pairs(engine) -> tuple[list[str], list[str]]:
    """Contexts with the large model's own next token as continuation (where that token's text splits back to it):
    pairs whose is_greedy is True, so the greedy flags compared below are not all False."""
    contexts, continuations = [], []
    for context in ["Question: Which planet is largest? Answer:", "A spider has", "Water boils at", "Two plus two is"]:
        session = engine.logits_session([engine.encode(context)])
        token = int(session.logits[0, : len(engine.tokenizer)].argmax())
        text = engine.tokenizer.decode([token])
        if engine.encode_pair(context, text)[1] == [token]:
            contexts.append(context)
            continuations.append(text)
    return contexts, continuations


def test_alpha_zero_scores_are_the_large_models(tiny_engine, small):
    proxy = ProxyEngine(tiny_engine, Expert(small, "tuned"), small, ProxyTuneParams(alpha=0.0), batch_size=4)
    assert isinstance(proxy, Engine)
    extra_ctx, extra_cont = greedy_pairs(tiny_engine)
    contexts, continuations = CONTEXTS + extra_ctx, CONTINUATIONS + extra_cont
    own, fused = tiny_engine.score(contexts, continuations), proxy.score(contexts, continuations)
    assert any(s.is_greedy for s in own)
    assert close(fused, own)
    assert [(s.n_tokens, s.is_greedy, s.n_chars) for s in fused] == [(s.n_tokens, s.is_greedy, s.n_chars) for s in own]


def test_tuned_equal_to_base_scores_are_the_large_models(tiny_engine, small):
    own = tiny_engine.score(CONTEXTS, CONTINUATIONS)
    same = Expert(small, "tuned")
    for tuned, base in ((small, small), (same, same)):
        fused = ProxyEngine(tiny_engine, tuned, base, ProxyTuneParams(alpha=2.5)).score(CONTEXTS, CONTINUATIONS)
        assert close(fused, own)
        assert [s.is_greedy for s in fused] == [s.is_greedy for s in own]


def _full_logits(engine, adapter, ids: list[int]) -> torch.Tensor:
    """Logits at every position of the whole sequence: one forward, no cache, no padding."""
    with engine.hf_model(adapter) as model, torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=engine.device)).logits[0].float()


def test_fused_scores_equal_a_full_sequence_recompute(tiny_engine, small):
    alpha = 1.5
    proxy = ProxyEngine(tiny_engine, Expert(small, "tuned"), small, ProxyTuneParams(alpha), batch_size=3)
    fused = proxy.score(CONTEXTS, CONTINUATIONS)
    vocab = len(tiny_engine.tokenizer)
    for i, (context, continuation) in enumerate(zip(CONTEXTS, CONTINUATIONS, strict=True)):
        ctx, cont = tiny_engine.encode_pair(context, continuation)
        ids = ctx + cont
        positions = slice(len(ctx) - 1, len(ids) - 1)  # the positions that predict the continuation
        logits = [_full_logits(e, a, ids)[positions] for e, a in ((tiny_engine, None), (small, "tuned"), (small, None))]
        rows = torch.log_softmax(fused_scores(*logits, alpha, vocab), dim=-1)
        target = torch.tensor(cont)
        expected = float(rows.gather(1, target[:, None]).sum())
        assert abs(fused[i].logprob - expected) <= 1e-4 * max(1.0, abs(expected)), i
        assert fused[i].is_greedy == bool((rows.argmax(-1) == target).all())
        assert fused[i].n_tokens == len(cont) and fused[i].n_chars == len(continuation)
    # The adapter does move the scores: the recomputation above is not the large model's own.
    own = tiny_engine.score(CONTEXTS, CONTINUATIONS)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(fused, own, strict=True)) > 0.1


def test_order_and_batching_do_not_change_a_score(tiny_engine, small):
    """Continuations of different lengths share a batch (rows leave it as they finish); any batch size and any input
    order give each pair the score it has alone."""
    tuned = Expert(small, "tuned")
    alone = [ProxyEngine(tiny_engine, tuned, small).score([c], [x])[0] for c, x in zip(CONTEXTS, CONTINUATIONS)]
    assert len({s.n_tokens for s in alone}) >= 3
    for batch_size in (1, 2, len(CONTEXTS)):
        batched = ProxyEngine(tiny_engine, tuned, small, batch_size=batch_size).score(CONTEXTS, CONTINUATIONS)
        assert close(batched, alone) and [s.is_greedy for s in batched] == [s.is_greedy for s in alone]
    order = [5, 2, 0, 4, 1, 3]
    shuffled = ProxyEngine(tiny_engine, tuned, small).score(
        [CONTEXTS[i] for i in order], [CONTINUATIONS[i] for i in order]
    )
    assert close(shuffled, [alone[i] for i in order])


def test_generate_is_proxy_generate(tiny_engine, small):
    params = GenerationParams(max_new_tokens=8)
    texts = [tiny_engine.render_chat([{"role": "user", "content": q}]) for q in ("Two plus two", "Largest planet?")]
    proxy = ProxyEngine(tiny_engine, Expert(small, "tuned"), small, ProxyTuneParams(2.0))
    expected = proxy_generate(tiny_engine, Expert(small, "tuned"), small, texts, params, ProxyTuneParams(2.0))
    assert [g.text for g in proxy.generate(texts, params)] == [g.text for g in expected]


def test_loader_shares_one_engine_and_counts_every_model(tiny_model_dir, tiny_draft_dir, tiny_adapters):
    adapter = tiny_adapters["intent"]
    proxy = load_proxy_engine(str(tiny_model_dir), f"{tiny_draft_dir}+{adapter}:{tiny_draft_dir}", 0.5)
    large, tuned, base = proxy.experts
    assert tuned.engine is base.engine and tuned.adapter is not None and base.adapter is None
    assert proxy.params == large.engine.params + tuned.engine.params + adapter_params(adapter)
    assert "delta(" in proxy.model_ref and "alpha=0.5" in proxy.model_ref and str(adapter) in proxy.model_ref
    assert proxy.describe()["alpha"] == 0.5 and proxy.adapters() == []
    assert proxy.context_window == 512 and proxy.count_tokens("Two plus two") == large.engine.count_tokens(
        "Two plus two"
    )
    same = load_proxy_engine(str(tiny_model_dir), f"{tiny_draft_dir}:{tiny_draft_dir}")
    assert same.params == same.experts[0].engine.params + same.experts[1].engine.params  # the small model once


def test_bad_requests_are_refused(tiny_engine, small, other_tok_engine, tiny_model_dir, tmp_path):
    proxy = ProxyEngine(tiny_engine, Expert(small, "tuned"), small)
    with pytest.raises(InputError, match="--expert-delta"):
        proxy.add_adapter("x", str(tmp_path))
    with pytest.raises(InputError, match="no adapters of its own"):
        proxy.score(["a"], [" b"], adapter="tuned")
    with pytest.raises(InputError, match="empty after tokenization"):
        proxy.score(["a"], [""])
    with pytest.raises(InputError, match="exceeds the context window"):
        proxy.score(["a"], [" word" * 600])
    with pytest.raises(InputError, match="one tokenizer"):
        ProxyEngine(tiny_engine, small, other_tok_engine)
    with pytest.raises(InputError, match="is not a folder"):
        load_proxy_engine(str(tiny_model_dir), f"{tiny_model_dir}+{tmp_path / 'missing'}:{tiny_model_dir}")
    with pytest.raises(InputError, match="finite number"):
        load_proxy_engine(str(tiny_model_dir), f"{tiny_model_dir}:{tiny_model_dir}", float("nan"))
