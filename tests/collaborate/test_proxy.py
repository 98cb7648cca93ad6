"""Proxy-tuning: the identities (alpha=0, tuned==base), a steering adapter that must win, seeded sampling, KV-cached
scores equal to a full recompute, padded output layers, and refusals."""

from __future__ import annotations

import math

import pytest
import torch

from fslm.collaborate.proxy import (
    Expert,
    ModelRef,
    ProxyTuneParams,
    fused_scores,
    parse_expert_delta,
    proxy_generate,
)
from fslm.engine import GenerationParams, load_engine
from fslm.errors import InputError

QUESTIONS = ["What is the capital of France?", "Which planet is largest? Answer in a word", "Two plus two"]
PARAMS = GenerationParams(max_new_tokens=12)
BIAS = 100.0  # what the steering adapter adds to its token's logit: far above any gap in the tiny models' log-probs


def bias_adapter(model_dir, folder, token: int):
    """A LoRA on the output layer whose only effect is +BIAS on one token's logit: A = 0, B = 0, B's bias = BIAS e_t.
    The tuned model then differs from its base by exactly that, at every position, whatever the input."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=2, lora_alpha=2, target_modules=["lm_head"], lora_bias=True, init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.zero_()
            if "lora_B" in name and name.endswith("bias"):
                param[token] = BIAS
    peft_model.save_pretrained(folder)
    return folder


def picked_tokens(large, tuned, base, texts, params=PARAMS, proxy=ProxyTuneParams()) -> list[list[int]]:
    """The tokens proxy-tuning picks for each text, end tokens included."""
    steps: list[list[int]] = [[] for _ in texts]

    def record(rows, fused, picked):
        for live, row in enumerate(rows):
            steps[row].append(int(picked[live]))

    proxy_generate(large, tuned, base, texts, params, proxy, on_step=record)
    return steps


@pytest.fixture(scope="module")
def small(tiny_draft_dir, tiny_adapters):
    """The small model (same tokenizer as tiny_engine) with a random adapter, "tuned"; an engine of this module's own,
    since adapters change the engine."""
    engine = load_engine(str(tiny_draft_dir))
    engine.add_adapter("tuned", str(tiny_adapters["intent"]))
    return engine


@pytest.fixture(scope="module")
def texts(tiny_engine):
    return [tiny_engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_fused_scores_follow_the_formula():
    large = torch.tensor([[2.0, 1.0, 0.0, 5.0]])  # the 4th column is output-layer padding
    tuned = torch.tensor([[0.0, 3.0, 0.0]])
    base = torch.tensor([[1.0, 1.0, 1.0]])
    fused = fused_scores(large, tuned, base, 0.5, vocab=3)
    lp = lambda x: torch.log_softmax(x[..., :3], -1)  # noqa: E731
    assert torch.allclose(fused, lp(large) + 0.5 * (lp(tuned) - lp(base)))
    assert fused.shape == (1, 3) and fused.argmax().item() == 1  # the delta overturns the large model's choice
    assert torch.equal(fused_scores(large, tuned, base, 0.0, vocab=3), lp(large))


def test_alpha_zero_is_the_large_models_greedy_output(tiny_engine, small, texts):
    greedy = tiny_engine.generate(texts, PARAMS)
    fused = proxy_generate(tiny_engine, Expert(small, "tuned"), small, texts, PARAMS, ProxyTuneParams(alpha=0.0))
    assert [g.text for g in fused] == [g.text for g in greedy]
    assert [g.tokens_out for g in fused] == [g.tokens_out for g in greedy]


def test_tuned_equal_to_base_is_the_large_models_output(tiny_engine, small, texts):
    greedy = [g.text for g in tiny_engine.generate(texts, PARAMS)]
    assert [g.text for g in proxy_generate(tiny_engine, small, small, texts, PARAMS)] == greedy
    same = Expert(small, "tuned")
    assert [g.text for g in proxy_generate(tiny_engine, same, same, texts, PARAMS, ProxyTuneParams(2.5))] == greedy
    # The random adapter does change the fused output: the identities above are not vacuous.
    steered = proxy_generate(tiny_engine, Expert(small, "tuned"), small, texts, PARAMS, ProxyTuneParams(2.0))
    assert [g.text for g in steered] != greedy


def test_an_adapter_biased_toward_a_token_makes_the_fusion_choose_it(tiny_engine, tiny_draft_dir, tmp_path, texts):
    token = tiny_engine.encode(" Jupiter")[0]
    engine = load_engine(str(tiny_draft_dir))
    engine.add_adapter("bias", str(bias_adapter(tiny_draft_dir, tmp_path / "bias", token)))
    alone = picked_tokens(tiny_engine, engine, engine, texts, proxy=ProxyTuneParams(alpha=0.0))
    assert all(token not in steps for steps in alone)  # the large model alone never picks it
    steered = picked_tokens(tiny_engine, Expert(engine, "bias"), engine, texts)
    assert steered == [[token] * PARAMS.max_new_tokens] * len(texts)
    fused = proxy_generate(tiny_engine, Expert(engine, "bias"), engine, texts, PARAMS)
    assert all(g.tokens_out == PARAMS.max_new_tokens and g.finish_reason == "length" for g in fused)


def test_sampling_with_a_seed_is_reproducible(tiny_engine, small, texts):
    tuned = Expert(small, "tuned")

    def sample(seed: int) -> list[str]:
        params = GenerationParams(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=seed)
        return [g.text for g in proxy_generate(tiny_engine, tuned, small, texts, params)]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert first != [g.text for g in proxy_generate(tiny_engine, tuned, small, texts, PARAMS)]


def _logits(engine, adapter, ids: list[int]) -> torch.Tensor:
    """Next-token logits of the whole sequence from scratch: no cache, no padding, no session."""
    with engine.hf_model(adapter) as model, torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=engine.device)).logits[0, -1].float()


def test_cached_fused_scores_equal_a_full_recompute_at_every_step(tiny_engine, small, texts):
    recorded: dict[int, list[tuple[torch.Tensor, int]]] = {i: [] for i in range(len(texts))}

    def record(rows, fused, picked):
        for live, row in enumerate(rows):
            recorded[row].append((fused[live].clone(), int(picked[live])))

    alpha = 1.5
    proxy_generate(tiny_engine, Expert(small, "tuned"), small, texts, PARAMS, ProxyTuneParams(alpha), on_step=record)
    vocab = len(tiny_engine.tokenizer)
    checked = 0
    for row, steps in recorded.items():
        ids = tiny_engine.encode(texts[row])
        for cached, picked in steps:
            full = fused_scores(
                _logits(tiny_engine, None, ids)[None],
                _logits(small, "tuned", ids)[None],
                _logits(small, None, ids)[None],
                alpha,
                vocab,
            )[0]
            assert torch.allclose(cached, full, atol=1e-4, rtol=1e-4), (row, len(ids))
            assert int(full.argmax()) == picked
            ids = ids + [picked]
            checked += 1
    assert checked >= len(texts) * 2  # prompts of different lengths, batched with left padding, several steps each


def test_a_padded_output_layer_is_cut_to_the_tokenizer(tiny_engine, tiny_model_dir, small, tmp_path, texts):
    """The large model's output layer has rows past the tokenizer, made to win the raw argmax; they are never picked
    and the output is that of the unpadded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    first = [steps[0] for steps in picked_tokens(tiny_engine, small, small, texts)]
    model.resize_token_embeddings(n + 16, mean_resizing=False)
    with torch.no_grad():
        out = model.get_output_embeddings().weight
        for k, token in enumerate(first):
            out[n + k] = 3 * out[token]  # a padded row with three times the logit of each text's first choice
    model.save_pretrained(tmp_path / "padded")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "padded")
    padded = load_engine(str(tmp_path / "padded"))
    raw = _logits(padded, None, tiny_engine.encode(texts[0]))
    assert raw.shape[0] == n + 16 and int(raw.argmax()) >= n  # uncut, the padding would win
    fused = proxy_generate(padded, small, small, texts, PARAMS)
    assert [g.text for g in fused] == [g.text for g in tiny_engine.generate(texts, PARAMS)]


def test_different_tokenizers_are_refused(tiny_engine, small, other_tok_engine, texts):
    with pytest.raises(InputError, match="one tokenizer for all three models.*the base model"):
        proxy_generate(tiny_engine, small, other_tok_engine, texts, PARAMS)
    with pytest.raises(InputError, match="one tokenizer"):
        proxy_generate(other_tok_engine, small, small, texts, PARAMS)


def test_bad_requests_are_refused(tiny_engine, small, texts):
    with pytest.raises(InputError, match="repetition_penalty"):
        proxy_generate(tiny_engine, small, small, texts, GenerationParams(repetition_penalty=1.3))
    with pytest.raises(InputError, match="exceeds"):
        proxy_generate(tiny_engine, small, small, ["word " * 600], PARAMS)
    with pytest.raises(InputError, match="empty"):
        proxy_generate(tiny_engine, small, small, [""], PARAMS)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, "1", True])
def test_alpha_must_be_finite(alpha):
    with pytest.raises(InputError, match="finite number"):
        ProxyTuneParams(alpha=alpha)


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0, 2.5])
def test_any_finite_alpha_is_accepted(alpha):
    assert ProxyTuneParams(alpha=alpha).alpha == alpha


def test_expert_delta_references():
    tuned, base = parse_expert_delta("qwen2.5-coder-0.5b+runs/ad:qwen2.5-coder-0.5b")
    assert tuned == ModelRef("qwen2.5-coder-0.5b", "runs/ad") and base == ModelRef("qwen2.5-coder-0.5b")
    assert str(tuned) == "qwen2.5-coder-0.5b+runs/ad"
    for bad in ["model", "a:b:c", ":b", "a:", "a+:b", "+x:b"]:
        with pytest.raises(InputError, match="expected"):
            parse_expert_delta(bad)
