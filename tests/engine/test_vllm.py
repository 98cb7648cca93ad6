"""The vllm engine (fslm/engine/vllm.py) against the HF reference, on the real SmolLM2 and the default stack's adapters.

vLLM lives in its own virtualenv (`make test-vllm`): in fslm's main venv only the missing-runtime test runs and the rest
skip. One vLLM `LLM` per process is the supported shape, so every test shares one engine on the embedded model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from fslm.engine import Engine, GenerationParams, engine_names, load_engine
from fslm.errors import ConfigError, FslmError, ModelNotFoundError

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed here: run `make test-vllm`")
PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "Name a planet in the solar system.",
]
GREEDY = GenerationParams(max_new_tokens=40, temperature=0.0)
LOGPROB_TOL = 2e-3  # nats per token: fp32 on both, different kernels (vLLM's CPU attention and LoRA vs PyTorch's)


def test_vllm_is_an_engine_name_and_missing_runtime_names_the_target():
    assert "vllm" in engine_names()
    if HAS_VLLM:
        pytest.skip("vllm is installed: the missing-runtime error cannot be seen here")
    with pytest.raises(FslmError, match=r"make test-vllm") as err:
        load_engine("smollm2-135m", backend="vllm")
    assert "fslm[vllm]" in str(err.value)


@pytest.fixture(scope="module")
def engines():
    """(vllm engine, hf engine), both with the default stack's four adapters under the stage names."""
    from fslm.engine.hf import HFEngine
    from fslm.engine.vllm import VllmEngine
    from fslm.models import resolve
    from fslm.stack import Stack

    try:
        resolve("smollm2-135m")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    vllm_engine = VllmEngine.from_ref("smollm2-135m")
    hf_engine = HFEngine.from_ref("smollm2-135m")
    stacks = (Stack.load(engine=vllm_engine), Stack.load(engine=hf_engine))
    return vllm_engine, hf_engine, stacks


def chat(engine, text):
    return engine.render_chat([{"role": "user", "content": text}])


@needs_vllm
@pytest.mark.slow
def test_protocol_and_adapters_loaded(engines):
    engine, hf, _ = engines
    assert isinstance(engine, Engine)
    assert sorted(engine.adapters()) == ["answer", "facts", "pick", "reasoning"]
    assert engine.params == hf.params and engine.context_window == hf.context_window
    assert engine.count_tokens(chat(engine, PROMPTS[0])) == hf.count_tokens(chat(hf, PROMPTS[0]))


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "answer", "facts"])
def test_greedy_texts_match_hf(engines, adapter):
    engine, hf, _ = engines
    texts = [chat(engine, p) for p in PROMPTS]
    ours, ref = engine.generate(texts, GREEDY, adapter), hf.generate(texts, GREEDY, adapter)
    assert [g.text for g in ours] == [g.text for g in ref]
    assert [(g.tokens_in, g.tokens_out, g.finish_reason) for g in ours] == [
        (g.tokens_in, g.tokens_out, g.finish_reason) for g in ref
    ]


@needs_vllm
@pytest.mark.slow
def test_ngram_guard_and_stop_strings_match_hf(engines):
    engine, hf, _ = engines
    params = GenerationParams(max_new_tokens=48, no_repeat_ngram_size=2, stop=("\n\n", "."))
    texts = [chat(engine, "List the numbers from one to twenty, separated by commas."), chat(engine, PROMPTS[2])]
    ours, ref = engine.generate(texts, params), hf.generate(texts, params)
    assert [(g.text, g.tokens_out, g.finish_reason) for g in ours] == [
        (g.text, g.tokens_out, g.finish_reason) for g in ref
    ]


@needs_vllm
@pytest.mark.slow
def test_rows_of_different_stages_in_one_call_equal_separate_calls(engines):
    engine, _, _ = engines
    """Adapter rows share one vLLM call; a row without adapter gets the bare base model, not the last loaded adapter
    (vLLM's CPU LoRA ops read slot -1 as the last slot, so such rows run in a call of their own)."""
    for stages in (["facts", "answer", None, "reasoning"], ["answer", None, None, None]):
        rows = [(chat(engine, p), GREEDY, a) for p, a in zip(PROMPTS, stages)]
        calls = engine.stats.calls
        mixed = engine.generate_mixed(rows)
        assert engine.stats.calls == calls + 2
        alone = [engine.generate([text], params, adapter)[0] for text, params, adapter in rows]
        assert [g.text for g in mixed] == [g.text for g in alone]


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "pick", "answer"])
def test_scores_match_hf(engines, adapter):
    """Several pairs in one call, with an adapter: the shape vLLM's lm_head LoRA wrapper crashes on."""
    engine, hf, _ = engines
    contexts = ["The capital of France is", "Question: How many legs does a spider have?\nAnswer:", "2 + 2 ="] * 2
    continuations = [" Paris", " eight", " 4", " Berlin", " six legs", " five"]
    ours, ref = engine.score(contexts, continuations, adapter), hf.score(contexts, continuations, adapter)
    for o, r in zip(ours, ref):
        assert (o.n_tokens, o.n_chars, o.is_greedy) == (r.n_tokens, r.n_chars, r.is_greedy)
        assert abs(o.logprob - r.logprob) <= LOGPROB_TOL * o.n_tokens, (o, r)
    assert ours[0].logprob > ours[3].logprob  # Paris over Berlin


@needs_vllm
@pytest.mark.slow
def test_default_stack_matches_hf(engines):
    _, _, (ours, ref) = engines
    got, want = ours.run_batch(PROMPTS[:3]), ref.run_batch(PROMPTS[:3])
    assert [r.outputs for r in got] == [r.outputs for r in want]
    assert "Paris" in got[0].answer
    options = "Which gas do plants take in from the air?\nA. helium\nB. carbon dioxide\nC. neon"
    picked = ours.run(options)
    assert picked.answer_stage == "pick" and picked.answer == ref.run(options).answer == "carbon dioxide"


@needs_vllm
@pytest.mark.slow
def test_adapters_it_would_apply_differently_are_refused(engines, tmp_path):
    engine, _, _ = engines
    source = engine._adapters["pick"].lora_path
    for change, message in [
        ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
        ({"r": 64}, "max_lora_rank"),
        ({"use_dora": True}, "DoRA"),
    ]:
        folder = tmp_path / message
        shutil.copytree(source, folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ConfigError, match=message):
            engine.add_adapter(f"bad-{message}", str(folder))
    with pytest.raises(ConfigError, match="not loaded"):
        engine.generate(["hi"], GREEDY, "nope")
