"""Training examples are exactly what the stage sees at inference; the fast loss equals the plain one."""

from __future__ import annotations

import json

import pytest
import torch

from fslm.config import load_stack_config
from fslm.distill import read_distilled
from fslm.errors import DataError
from fslm.finetune import TrainOptions, build_examples, plan_batches, usable_records
from fslm.finetune.trainer import batch_loss
from fslm.stack import Stack


def test_examples_equal_inference_inputs_with_teacher_forcing(stack_file, distilled_file, fresh_engine):
    cfg = load_stack_config(stack_file)
    records = usable_records(cfg, read_distilled(distilled_file), str(distilled_file))
    assert len(records) == 16  # the kept=False record is not trained on
    data = build_examples(cfg, fresh_engine, records, max_length=512)
    stack = Stack(cfg, fresh_engine)
    eos = fresh_engine.tokenizer.eos_token_id
    for index, stage_data in enumerate(data):
        assert stage_data.stage == cfg.stages[index].name and len(stage_data.examples) == 16
        for ex, rec in zip(stage_data.examples, records):
            earlier = {s.name: rec["targets"][s.name] for s in cfg.stages[:index]}
            assert fresh_engine.tokenizer.decode(ex.prompt_ids) == stack.stage_input(index, rec["prompt"], earlier)
            assert list(ex.target_ids) == fresh_engine.encode(rec["targets"][stage_data.stage]) + [eos]
    answer = data[2].examples[0]
    assert "Q: What is 0 plus 0? F: zero and zero" in fresh_engine.tokenizer.decode(answer.prompt_ids)


def test_too_long_examples_are_skipped_and_counted(stack_file, distilled_file, fresh_engine):
    cfg = load_stack_config(stack_file)
    records = usable_records(cfg, read_distilled(distilled_file), "d")
    lengths = sorted(ex.length for ex in build_examples(cfg, fresh_engine, records, 512)[2].examples)
    short = build_examples(cfg, fresh_engine, records, max_length=lengths[7])[2]
    assert len(short.examples) + short.skipped_too_long == 16 and short.skipped_too_long == sum(
        n > lengths[7] for n in lengths
    )


def test_records_without_every_stage_target_are_data_errors(stack_file, tmp_path):
    cfg = load_stack_config(stack_file)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"id": "a", "prompt": "p", "kept": True, "targets": {"intent": "i", "facts": "f"}}) + "\n"
    )
    with pytest.raises(DataError, match=r"line 1 \(id 'a'\): no target text for stage\(s\) \['answer'\]"):
        usable_records(cfg, read_distilled(path), str(path))
    path.write_text(json.dumps({"id": "a", "prompt": "p", "kept": False}) + "\n")
    with pytest.raises(DataError, match="no usable"):
        usable_records(cfg, read_distilled(path), str(path))


def test_target_only_logits_give_the_same_loss_as_full_logits(stack_file, distilled_file, fresh_engine):
    from peft import LoraConfig, get_peft_model

    cfg = load_stack_config(stack_file)
    data = build_examples(cfg, fresh_engine, usable_records(cfg, read_distilled(distilled_file), "d"), 512)
    batch = data[1].examples[:5]
    torch.manual_seed(0)
    model = get_peft_model(
        fresh_engine.base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.eval()
    pad = fresh_engine.tokenizer.pad_token_id
    fast, n_fast, t_fast = batch_loss(model, batch, pad, TrainOptions(target_logits_only=True), bf16=False)
    slow, n_slow, t_slow = batch_loss(model, batch, pad, TrainOptions(target_logits_only=False), bf16=False)
    model.unload()
    assert (n_fast, t_fast) == (n_slow, t_slow) == (sum(e.length for e in batch), sum(len(e.target_ids) for e in batch))
    assert torch.allclose(fast, slow, atol=1e-5), (fast, slow)


def test_batch_plans_cover_every_example_once_and_bucketing_cuts_padding(stack_file, distilled_file, fresh_engine):
    cfg = load_stack_config(stack_file)
    examples = build_examples(cfg, fresh_engine, usable_records(cfg, read_distilled(distilled_file), "d"), 512)[
        2
    ].examples
    for bucketing in (True, False):
        options = TrainOptions(batch_size=4, bucketing=bucketing)
        plan = plan_batches(examples, options, epoch=0)
        assert sorted(i for b in plan for i in b) == list(range(len(examples)))
        assert plan == plan_batches(examples, options, epoch=0) != plan_batches(examples, options, epoch=1)

    def padded(plan):
        return sum(len(b) * max(examples[i].length for i in b) for b in plan)

    naive = sum(padded(plan_batches(examples, TrainOptions(batch_size=4, bucketing=False), e)) for e in range(5))
    bucketed = sum(padded(plan_batches(examples, TrainOptions(batch_size=4, bucketing=True), e)) for e in range(5))
    assert bucketed <= naive
