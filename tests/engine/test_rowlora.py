"""Per-row LoRA (RowLoRA) computes what PEFT's per-row `adapter_names` path computes, and leaves the model as found."""

from __future__ import annotations

import pytest
import torch
from conftest import make_lora_adapter

from fslm.engine import GenerationParams
from fslm.engine.rowlora import RowLoRA


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_adapters, tmp_path_factory):
    from fslm.engine import load_engine

    engine = load_engine(str(tiny_model_dir))
    engine.add_adapter("intent", str(tiny_adapters["intent"]))
    engine.add_adapter("answer", str(tiny_adapters["answer"]))
    other = make_lora_adapter(  # another rank and other layers: rows must not borrow each other's shapes
        tiny_model_dir,
        tmp_path_factory.mktemp("wide") / "wide",
        seed=7,
        rank=2,
        targets=("k_proj", "o_proj", "up_proj"),
    )
    engine.add_adapter("wide", str(other))
    return engine


NAMES = ["intent", "intent", "__base__", "wide", "answer"]


def logits(model, ids, **extra):
    with torch.inference_mode():
        return model(input_ids=ids, **extra).logits


def test_rows_get_the_same_logits_as_peft_per_row_adapters_also_after_rows_leave(engine):
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (len(NAMES), 7))
    model = engine.model
    want = logits(model, ids, adapter_names=NAMES)
    rows = RowLoRA.build(model, NAMES)
    assert rows is not None
    with rows:
        got = logits(model, ids)
        live = [0, 3, 4]
        rows.select(live)
        fewer = logits(model, ids[live])
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(fewer, logits(model, ids[live], adapter_names=[NAMES[i] for i in live]), atol=1e-4)
    # each adapter really changes its rows (the test would pass vacuously otherwise)
    assert not torch.allclose(want[0], want[2], atol=1e-3) and not torch.allclose(want[3], want[2], atol=1e-3)


def test_leaving_restores_the_model(engine):
    ids = torch.randint(3, 300, (2, 5))
    with engine._active("intent") as model:
        before = logits(model, ids)
        with RowLoRA.build(model, ["answer", "__base__"]):
            pass
        assert torch.allclose(logits(model, ids), before)
        assert not any(m._forward_hooks for m in model.modules())


def test_mixed_generation_uses_it_and_equals_one_call_per_adapter(engine, monkeypatch):
    import fslm.engine.hf as hf

    built = []
    real = hf.RowLoRA.build
    monkeypatch.setattr(hf.RowLoRA, "build", lambda model, names: built.append(real(model, names)) or built[-1])
    texts = ["The capital of France is", "Two plus two is", "A spider has", "The sky is blue because"]
    adapters = ["intent", "wide", None, "answer"]
    caps = [5, 3, 6, 4]
    rows = [(t, GenerationParams(max_new_tokens=c), a) for t, c, a in zip(texts, caps, adapters)]
    mixed = engine.generate_mixed(rows)
    assert built and all(b is not None for b in built)
    for (text, params, adapter), got in zip(rows, mixed, strict=True):
        assert got.text == engine.generate([text], params, adapter=adapter)[0].text


def test_variants_it_cannot_express_keep_peft_path(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), adapter_name="d")
    assert RowLoRA.build(dora, ["d", "__base__"]) is None
    assert RowLoRA.build(base, ["__base__"]) is None  # not a PEFT model


def test_bfloat16_rows_equal_each_row_alone_under_its_adapter(tiny_model_dir, tiny_adapters):
    """In bf16 the delta is added as PEFT's one-adapter path adds it (in the adapter's float32, rounded once), so a
    row equals that row run alone under its adapter, as a stage's separate call runs it. (PEFT's own per-row path
    rounds the delta to bf16 before adding it and drifts from that: up to 1.6 logits on these random adapters.)"""
    from fslm.engine import load_engine

    engine = load_engine(str(tiny_model_dir), dtype="bfloat16")
    engine.add_adapter("intent", str(tiny_adapters["intent"]))
    engine.add_adapter("answer", str(tiny_adapters["answer"]))
    names = ["answer", "__base__", "intent"]
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (3, 6))
    with RowLoRA.build(engine.model, names):
        rows = logits(engine.model, ids)
    assert rows.dtype == torch.bfloat16
    for i, name in enumerate(names):
        with engine._active(None if name == "__base__" else name) as model:
            alone = logits(model, ids[i : i + 1])[0]
        assert torch.allclose(rows[i].float(), alone.float(), atol=1e-2), name
