"""Token log-probabilities of generated text: same texts as generate, the model's own distribution, both engines."""

from __future__ import annotations

import pytest
import torch

from fslm.engine import GenerationParams
from fslm.engine.logprobs import LogprobEngine, StepRecorder, logprobs_refusal, token_logprobs

PROMPTS = ["What is the capital of France?", "Name three colours.", "Two plus two?"]


def chat(engine, text):
    return engine.render_chat([{"role": "user", "content": text}])


@torch.inference_mode()
def forward_logprobs(engine, text: str, ids: list[int]) -> list[torch.Tensor]:
    """log-softmax of the model at each generated position, by one plain forward pass over prompt + tokens."""
    prompt = engine.encode(text)
    logits = engine.model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
    return [logits[len(prompt) - 1 + k].log_softmax(-1) for k in range(len(ids))]


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(max_new_tokens=10),
        GenerationParams(max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2),
        GenerationParams(max_new_tokens=10, temperature=1.2, top_p=0.9, seed=3),
    ],
)
def test_hf_logprobs_are_the_models_own_and_texts_are_generates(tiny_engine, params):
    assert isinstance(tiny_engine, LogprobEngine) and logprobs_refusal(tiny_engine) is None
    texts = [chat(tiny_engine, p) for p in PROMPTS]
    logged = tiny_engine.generate_logprobs(texts, params, None, top=5)
    assert [lg.generation.text for lg in logged] == [g.text for g in tiny_engine.generate(texts, params)]
    for text, lg in zip(texts, logged, strict=True):
        ids = [t.token_id for t in lg.tokens]
        assert tiny_engine._text(ids).strip() == lg.generation.text  # the tokens spell the returned text
        for t, ref in zip(lg.tokens, forward_logprobs(tiny_engine, text, ids), strict=True):
            assert t.logprob == pytest.approx(float(ref[t.token_id]), abs=1e-3)
            values, _ = ref.topk(5)
            assert [v for _, v in t.top] == pytest.approx(values.tolist(), abs=1e-3)  # best first
            if params.temperature == 0 and params.repetition_penalty == 1.0:
                assert t.top[0] == (t.token, pytest.approx(t.logprob))  # greedy: the chosen token is the best


def test_streaming_with_logprobs_sends_the_same_text(tiny_engine):
    texts = [chat(tiny_engine, p) for p in PROMPTS]
    pieces: dict[int, list[str]] = {}
    logged = tiny_engine.generate_logprobs(
        texts, GenerationParams(max_new_tokens=8), None, top=0, on_text=lambda r, p: pieces.setdefault(r, []).append(p)
    )
    for row, lg in enumerate(logged):
        assert "".join(pieces.get(row, [])) == lg.generation.text
        assert all(t.top == () for t in lg.tokens)


def test_a_stop_string_drops_the_tokens_after_the_cut():
    decode = {1: "Par", 2: "is", 3: ".", 4: " And"}
    text_of = lambda ids: "".join(decode[i] for i in ids)  # noqa: E731
    steps = [(1, -0.1, []), (2, -0.2, []), (3, -0.3, []), (4, -0.4, []), (9, -0.5, [])]  # 9: EOS, not kept
    kept = token_logprobs(steps, 4, "Paris", text_of)
    assert [t.token for t in kept] == ["Par", "is"]
    assert token_logprobs(steps, 4, "", text_of) == []


def test_recorder_checks_top():
    with pytest.raises(ValueError, match="0 to 20"):
        StepRecorder(1, 21)


def test_an_engine_without_the_capability_is_refused_by_name(tiny_engine):
    class GenerateOnly:
        model_ref = "m"

        def generate(self, texts, params, adapter=None):
            return tiny_engine.generate(texts, params, adapter=adapter)

    assert "does not return token log-probabilities" in logprobs_refusal(GenerateOnly())


@pytest.mark.parametrize("text", ["plain words", "café crème", "naïve 🙂 emoji — dash", "日本語のテキスト"])
def test_token_bytes_join_to_the_texts_utf8(tiny_engine, text):
    """Where one character spans tokens each token's `token` is U+FFFD, but its bytes are exact."""
    from fslm.engine.logprobs import token_bytes

    raw = token_bytes(tiny_engine.tokenizer)
    ids = tiny_engine.tokenizer(text, add_special_tokens=False).input_ids
    assert b"".join(raw(i) for i in ids) == text.encode("utf-8")
    assert raw(tiny_engine.tokenizer.eos_token_id) == b""


def test_served_logprobs_carry_the_tokens_bytes_and_character_offsets():
    from fslm.engine.logprobs import TokenLogprob
    from fslm.serve.shapes import Shape

    smile = "🙂".encode()
    tokens = [
        TokenLogprob(1, "Hi", -0.1, raw=b"Hi"),
        TokenLogprob(2, "\ufffd", -0.2, (("\ufffd", -0.2),), raw=smile[:2], top_raw=(smile[:2],)),
        TokenLogprob(3, "\ufffd", -0.3, raw=smile[2:]),
        TokenLogprob(4, "!", -0.4),
    ]
    chat = Shape(chat=True).logprobs(tokens)["content"]
    assert b"".join(bytes(c["bytes"]) for c in chat).decode() == "Hi🙂!"
    assert chat[1]["top_logprobs"][0]["bytes"] == list(smile[:2])
    legacy = Shape(chat=False).logprobs(tokens)
    assert legacy["text_offset"] == [0, 2, 2, 3]  # "Hi" | 🙂 (one character over two tokens) | "!"
