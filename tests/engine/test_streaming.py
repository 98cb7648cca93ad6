"""Token-level streaming (fslm.engine.streaming): both backends report each row's text piece by piece as they decode,
the pieces join to exactly what `generate` returns, and streaming changes nothing that is decoded."""

from __future__ import annotations

from collections import defaultdict

import pytest

from fslm.engine import GenerationParams, StreamingEngine, generate_streaming
from fslm.engine.streaming import TextDeltas

PROMPTS = ["What is the capital of France?", "How many legs does a spider have?", "Why is the sky blue?"]


def chat(engine, text):
    return engine.render_chat([{"role": "system", "content": "Answer."}, {"role": "user", "content": text}])


def collect(engine, texts, params):
    pieces: dict[int, list[str]] = defaultdict(list)
    made = engine.generate_stream(texts, params, None, lambda row, piece: pieces[row].append(piece))
    return made, pieces


def check_stream_equals_generate(engine, params):
    texts = [chat(engine, p) for p in PROMPTS]
    plain = engine.generate(texts, params)
    made, pieces = collect(engine, texts, params)
    assert [g.text for g in made] == [g.text for g in plain]  # streaming changes nothing decoded
    assert [g.tokens_out for g in made] == [g.tokens_out for g in plain]
    for row, gen in enumerate(made):
        assert "".join(pieces[row]) == gen.text
    return made, pieces


def test_hf_streams_token_by_token_and_joins_to_generate(tiny_engine):
    assert isinstance(tiny_engine, StreamingEngine)
    made, pieces = check_stream_equals_generate(tiny_engine, GenerationParams(max_new_tokens=24))
    longest = max(range(len(made)), key=lambda r: made[r].tokens_out)
    assert made[longest].tokens_out >= 8
    assert len(pieces[longest]) >= 4  # many pieces, not the finished text in one


def test_hf_stream_respects_stop_strings(tiny_engine):
    texts = [chat(tiny_engine, p) for p in PROMPTS]
    free = tiny_engine.generate(texts, GenerationParams(max_new_tokens=24))
    words = [w for g in free for w in g.text.split()[1:-1] if w.isascii() and w.isalnum()]
    if not words:
        pytest.skip("the tiny model wrote no multi-word text to stop in")
    made, _ = check_stream_equals_generate(tiny_engine, GenerationParams(max_new_tokens=24, stop=(words[0],)))
    assert all(words[0] not in g.text for g in made)


def test_hf_stream_sampled_with_seed_equals_generate(tiny_engine):
    check_stream_equals_generate(tiny_engine, GenerationParams(max_new_tokens=16, temperature=0.9, seed=7))


def test_text_deltas_hold_back_what_the_final_text_may_lose():
    table = {1: " Hello", 2: " wor", 3: "ld", 4: " ", 5: "ST", 6: "OP", 7: " x"}
    deltas = TextDeltas(lambda ids: "".join(table[i] for i in ids), stops=("STOP",))
    sent = [deltas.feed([1, 2, 3, 4, 5, 6, 7][: k + 1]) for k in range(7)]
    assert sent == ["Hello", " wor", "ld", "", "", "", ""]  # " " and "ST" wait; "STOP" ends the row
    assert deltas.finish("Hello world") == ""


def test_an_engine_without_streaming_falls_back_to_one_piece(tiny_engine):
    class Plain:
        def generate(self, texts, params, adapter=None):
            return tiny_engine.generate(texts, params, adapter=adapter)

    texts = [chat(tiny_engine, PROMPTS[0])]
    got: list[tuple[int, str]] = []
    made = generate_streaming(Plain(), texts, GenerationParams(max_new_tokens=8), None, lambda r, p: got.append((r, p)))
    assert got == ([(0, made[0].text)] if made[0].text else [])


def test_llamacpp_streams_and_joins_to_generate(tiny_model_dir, tmp_path_factory, monkeypatch):
    pytest.importorskip("llama_cpp")
    from fslm.engine.llamacpp import LlamaCppEngine, hf_to_gguf
    from fslm.models import load_tokenizer
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path_factory.mktemp("stream-cache")))
    reset_settings()
    out = tmp_path_factory.mktemp("gguf-stream") / "tiny-f32.gguf"
    hf_to_gguf(tiny_model_dir, out, "f32")
    engine = LlamaCppEngine(out, load_tokenizer(str(tiny_model_dir)), model_ref=str(tiny_model_dir), kv_type="f32")
    try:
        assert isinstance(engine, StreamingEngine)
        made, pieces = check_stream_equals_generate(engine, GenerationParams(max_new_tokens=24))
        assert max(len(p) for p in pieces.values()) >= 4
    finally:
        engine.close()
        reset_settings()
