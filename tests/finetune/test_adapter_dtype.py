"""fp16 adapter storage (`TrainOptions.save_dtype`): half the bytes, loads back, generates and scores as the fp32 file."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from fslm.engine import GenerationParams, load_engine
from fslm.errors import ConfigError
from fslm.finetune import ALL_PROJECTIONS, TrainOptions, finetune, lora_param_count


def _dtypes(path) -> set[str]:
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as fh:
        return {str(fh.get_tensor(k).dtype) for k in fh.keys()}


def test_fp16_adapters_are_half_size_and_behave_like_fp32(stack_file, distilled_file, tiny_model_dir, tmp_path):
    runs = {}
    for dtype in ("float32", "float16"):
        options = TrainOptions(rank=4, alpha=8, epochs=1, batch_size=8, lr=5e-3, save_dtype=dtype)
        finetune(
            stack_file,
            distilled_file,
            tmp_path / dtype,
            options,
            stages=["answer"],
            engine=load_engine(str(tiny_model_dir)),
        )
        runs[dtype] = tmp_path / dtype / "adapters" / "answer"
    assert _dtypes(runs["float32"]) == {"torch.float32"} and _dtypes(runs["float16"]) == {"torch.float16"}
    size = {d: (p / "adapter_model.safetensors").stat().st_size for d, p in runs.items()}
    assert size["float16"] < 0.6 * size["float32"]

    engine = load_engine(str(tiny_model_dir))
    for dtype, path in runs.items():
        engine.add_adapter(dtype, str(path))
    prompts = ["What is 3 plus 4?", "Name a planet."]
    params = GenerationParams(max_new_tokens=12)
    assert [g.text for g in engine.generate(prompts, params, adapter="float16")] == [
        g.text for g in engine.generate(prompts, params, adapter="float32")
    ]
    a = engine.score(prompts, [" seven", " Jupiter"], adapter="float32")
    b = engine.score(prompts, [" seven", " Jupiter"], adapter="float16")
    assert all(abs(x.logprob - y.logprob) < 1e-2 for x, y in zip(a, b))
    base = engine.score(prompts, [" seven", " Jupiter"])
    assert any(abs(x.logprob - y.logprob) > 1e-3 for x, y in zip(a, base))  # the adapter does something


def test_lora_param_count_and_bad_dtype(tiny_model_dir):
    engine = load_engine(str(tiny_model_dir))
    # tiny Llama: hidden 64, kv 32, intermediate 128, 2 layers; rank * (in + out) per projection
    per_layer = (64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64)
    assert lora_param_count(engine.base, 4, ALL_PROJECTIONS) == 4 * 2 * per_layer
    with pytest.raises(ConfigError, match="save-dtype"):
        TrainOptions(save_dtype="int8").validate()
