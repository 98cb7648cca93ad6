"""A batch over the token budget runs as micro-batches whose accumulated gradient is the whole batch's."""

from __future__ import annotations

import pytest
import torch

from fslm.finetune import TrainOptions
from fslm.finetune.choice_kd import ChoiceExample, choice_kd_loss
from fslm.finetune.examples import Example
from fslm.finetune.trainer import accumulate, cross_entropy_loss, micro_batches, padded_tokens


def ex(n_prompt: int, n_target: int, tag: str = "e") -> Example:
    return Example(tag, tuple(range(3, 3 + n_prompt)), tuple(range(5, 5 + n_target)))


def test_micro_batches_respect_the_budget_and_keep_order():
    batch = [ex(10, 2, "a"), ex(10, 6, "b"), ex(30, 2, "c"), ex(4, 1, "d")]
    assert padded_tokens(batch) == 4 * 32
    assert micro_batches(batch, None) == [batch] and micro_batches(batch, 4 * 32) == [batch]
    parts = micro_batches(batch, 40)
    assert [e for part in parts for e in part] == batch  # every example once, in order
    assert all(padded_tokens(part) <= 40 or len(part) == 1 for part in parts)
    assert micro_batches(batch, 1) == [[e] for e in batch]  # an example over the budget runs alone


def test_a_choice_question_counts_all_its_options():
    q = ChoiceExample("q", (ex(5, 1), ex(5, 3), ex(5, 2)), gold=0, teacher=(0.0, 0.0, 0.0))
    assert padded_tokens([q]) == 3 * 8 and q.units == 1


def _lora(engine):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(engine.base_model, config)


def _grads(model, loss_fn, batch, budget):
    model.zero_grad(set_to_none=True)
    loss, tokens, targets, parts = accumulate(loss_fn, model, batch, budget, False)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss, tokens, targets, parts, grads


@pytest.mark.parametrize("kind", ["tokens", "choice"])
def test_accumulated_gradient_equals_the_whole_batchs(fresh_engine, kind):
    model = _lora(fresh_engine)
    with torch.no_grad():  # a non-zero LoRA B, so every LoRA weight gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    pad = fresh_engine.tokenizer.pad_token_id or 0
    if kind == "tokens":
        batch = [ex(6, 2, "a"), ex(9, 5, "b"), ex(3, 1, "c"), ex(12, 3, "d")]
        loss_fn = cross_entropy_loss(pad, TrainOptions(precision="fp32"))
    else:
        options = TrainOptions(kd="t", kd_level="choice", kd_mix=0.5, kd_confidence=0.2, precision="fp32")
        batch = [
            ChoiceExample(
                f"q{i}", (ex(4 + i, 1), ex(4 + i, 2 + i), ex(4 + i, 3)), gold=i % 3, teacher=(-1.0, -2.0, -0.3)
            )
            for i in range(4)
        ]
        loss_fn = lambda m, b, bf16: choice_kd_loss(m, b, pad, options, bf16)  # noqa: E731
    whole = _grads(model, loss_fn, batch, None)
    split = _grads(model, loss_fn, batch, padded_tokens(batch[:2]))
    assert len(micro_batches(batch, padded_tokens(batch[:2]))) > 1
    assert float(split[0]) == pytest.approx(float(whole[0]), rel=1e-5)
    assert split[1:3] == whole[1:3]
    assert split[3].keys() == whole[3].keys() and all(
        split[3][k] == pytest.approx(whole[3][k], rel=1e-5) for k in whole[3]
    )
    for name, grad in whole[4].items():
        # equal up to float rounding (the parts are padded to other widths)
        assert float((split[4][name] - grad).norm()) <= 1e-4 * float(grad.norm()) + 1e-8, name


def test_gradient_checkpointing_gives_the_same_gradient_and_is_off_afterwards(fresh_engine):
    from fslm.finetune.trainer import recomputing

    model = _lora(fresh_engine)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    pad = fresh_engine.tokenizer.pad_token_id or 0
    batch = [ex(6, 2, "a"), ex(9, 5, "b"), ex(3, 1, "c")]
    loss_fn = cross_entropy_loss(pad, TrainOptions(precision="fp32"))
    model.train()
    plain = _grads(model, loss_fn, batch, None)
    decoder = model.get_base_model().get_decoder()
    with recomputing(model, True):
        assert decoder.gradient_checkpointing
        recomputed = _grads(model, loss_fn, batch, None)
    assert not decoder.gradient_checkpointing
    model.eval()
    assert float(recomputed[0]) == pytest.approx(float(plain[0]), rel=1e-6)
    assert recomputed[4].keys() == plain[4].keys()
    for name, grad in plain[4].items():
        assert float(grad.norm()) > 0, name
        assert float((recomputed[4][name] - grad).norm()) <= 1e-5 * float(grad.norm()) + 1e-8, name
