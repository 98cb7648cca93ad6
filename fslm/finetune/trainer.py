"""LoRA training of one stage: batching, mixed precision, target-only loss, checkpoints and exact resume.

Speed options (all on by default, `optimized=False` is the naive baseline the benchmark compares against):
- length bucketing: batches of similar length, so little compute is spent on padding;
- bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX), fp32 master weights and optimizer;
- logits only at target positions: the vocabulary projection (49k x 576 for SmolLM2) runs on ~1/3 of the tokens;
- threads picked from the load average and re-checked as training runs (see fslm/cpu.py: spinning OpenMP threads
  on a shared CPU were measured 10x slower than one thread).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fslm.cpu import apply_threads, bf16_is_fast
from fslm.errors import ConfigError
from fslm.finetune.checkpoint import load_checkpoint, save_checkpoint
from fslm.finetune.examples import Example
from fslm.finetune.options import ALL_PROJECTIONS, TrainOptions  # noqa: F401 - ALL_PROJECTIONS re-exported


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): only then is bf16 autocast faster than fp32 on a CPU."""
    return bf16_is_fast()


def use_bf16(options: TrainOptions) -> bool:
    return options.precision == "bf16" or (options.precision == "auto" and cpu_has_bf16())


def plan_batches(examples: Sequence[Example], options: TrainOptions, epoch: int) -> list[list[int]]:
    """Deterministic batch order for an epoch (seed, epoch): a resumed run replays exactly the same batches."""
    rng = random.Random(options.seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    size = options.batch_size
    if not options.bucketing:
        return [order[i : i + size] for i in range(0, len(order), size)]
    order.sort(key=lambda i: examples[i].length)  # stable: ties keep the shuffled order
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def padded_tokens(part: Sequence[Any]) -> int:
    """The tokens a forward pass over `part` holds once padded: its sequences times the longest one."""
    rows = [row for ex in part for row in ex.rows]
    return len(rows) * max(row.length for row in rows)


def micro_batches(batch: Sequence[Any], budget: int | None) -> list[list[Any]]:
    """`batch` cut, in order, into parts of at most `budget` padded tokens (one example may exceed it alone)."""
    if budget is None or padded_tokens(batch) <= budget:
        return [list(batch)]
    parts: list[list[Any]] = [[]]
    for ex in batch:
        if parts[-1] and padded_tokens([*parts[-1], ex]) > budget:
            parts.append([])
        parts[-1].append(ex)
    return parts


def accumulate(loss_fn: LossFn, peft_model, batch: Sequence[Any], budget: int | None, bf16: bool):
    """One batch's gradients, micro-batch by micro-batch: each part's mean loss weighted by its share of the batch's
    averaging units (target tokens, or questions), so the summed gradient is the whole batch's. Returns what
    `loss_fn` returns for the whole batch, the loss detached."""
    total_units = sum(ex.units for ex in batch)
    loss, tokens, targets, parts = torch.zeros(()), 0, 0, {}
    for part in micro_batches(batch, budget):
        weight = sum(ex.units for ex in part) / total_units
        part_loss, part_tokens, part_targets, part_parts = loss_fn(peft_model, part, bf16)
        (part_loss * weight).backward()
        loss += part_loss.detach() * weight
        tokens, targets = tokens + part_tokens, targets + part_targets
        for name, value in part_parts.items():
            parts[name] = parts.get(name, 0.0) + value * weight
    return loss, tokens, targets, parts


@contextmanager
def recomputing(peft_model, enabled: bool):
    """Gradient checkpointing for the span of a training loop only: the base model is shared, and later stages and
    evaluation run it plainly. Non-reentrant, so frozen embeddings need no input gradients."""
    if not enabled:
        yield
        return
    model = peft_model.get_base_model()
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


def lr_at(step: int, total: int, options: TrainOptions) -> float:
    warm = max(1, int(options.warmup * total))
    if step < warm:
        return options.lr * (step + 1) / warm
    return options.lr * max(0.0, (total - step) / max(1, total - warm))


@dataclass
class StageResult:
    stage: str
    steps: list[dict] = field(default_factory=list)  # one entry per optimizer step
    examples: int = 0
    skipped_too_long: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0
    train_tokens: int = 0
    precision: str = "fp32"

    @property
    def tokens_per_second(self) -> float:
        busy = sum(s["seconds"] for s in self.steps)
        return sum(s["tokens"] for s in self.steps) / busy if busy else 0.0

    def summary(self) -> dict:
        losses = [s["loss"] for s in self.steps]
        k = max(1, min(5, len(losses) // 4))
        parts = {  # the named parts of a mixed loss (distillation: hard, kd, own), averaged like final_loss
            f"final_{name}": round(sum(s[name] for s in self.steps[-k:]) / k, 4)
            for name in ("hard", "kd", "own")
            if self.steps and all(name in s for s in self.steps[-k:])
        }
        return {
            "examples": self.examples,
            "skipped_too_long": self.skipped_too_long,
            "steps": len(self.steps),
            "first_loss": round(sum(losses[:k]) / k, 4) if losses else None,
            "final_loss": round(sum(losses[-k:]) / k, 4) if losses else None,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "seconds": round(self.seconds, 1),
            "resumed_from_step": self.resumed_from,
            "precision": self.precision,
            **parts,
        }


def batch_tensors(batch: Sequence[Example], pad_id: int):
    """(ids, mask, rows, cols, labels): the padded batch and, per target token, the position that predicts it."""
    width = max(ex.length for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, labels = [], [], []
    for row, ex in enumerate(batch):
        seq = list(ex.prompt_ids) + list(ex.target_ids)
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        start = len(ex.prompt_ids)
        rows += [row] * len(ex.target_ids)
        cols += range(start - 1, start - 1 + len(ex.target_ids))  # position t predicts token t + 1
        labels += ex.target_ids
    return ids, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels)


def target_logits(model, ids, mask, rows, cols, shortcut: bool) -> torch.Tensor:
    """Logits at (rows, cols) only: through the decoder and the output layer on those positions when `shortcut`,
    else from the full forward pass (models that soft-cap their logits)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if shortcut and not getattr(inner.config, "final_logit_softcapping", None):
        hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return inner.get_output_embeddings()(hidden[rows, cols])
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, cols]


def batch_loss(
    peft_model, batch: Sequence[Example], pad_id: int, options: TrainOptions, bf16: bool
) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy over the target tokens of a batch; returns (loss, real tokens, target tokens)."""
    ids, mask, rows, cols, labels = batch_tensors(batch, pad_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = target_logits(peft_model, ids, mask, rows, cols, options.target_logits_only)
    return F.cross_entropy(logits.float(), labels), int(mask.sum()), len(labels)


# (peft_model, batch, bf16) -> (loss, real tokens, target tokens, named parts of the loss for the log)
LossFn = Callable[[Any, Sequence[Any], bool], tuple[torch.Tensor, int, int, dict[str, float]]]


def cross_entropy_loss(pad_id: int, options: TrainOptions) -> LossFn:
    """The plain objective: target-token cross-entropy, no parts."""

    def loss(peft_model, batch, bf16):
        return (*batch_loss(peft_model, batch, pad_id, options, bf16), {})

    return loss


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def train_stage(
    peft_model,
    examples: Sequence[Example],
    options: TrainOptions,
    checkpoint_dir: Path,
    fingerprint: dict,
    pad_id: int,
    progress: Callable[[int, int, float], None] | None = None,
    loss_fn: LossFn | None = None,
) -> StageResult:
    """Train the active LoRA adapter of `peft_model` on `examples`, resuming from `checkpoint_dir` when possible.
    `loss_fn` (default: target cross-entropy) may be any objective over a batch of `examples` (distillation)."""
    from peft import set_peft_model_state_dict

    result = StageResult(stage=checkpoint_dir.name, examples=len(examples))
    bf16 = use_bf16(options)
    result.precision = "bf16-autocast" if bf16 else "fp32"
    loss_fn = loss_fn or cross_entropy_loss(pad_id, options)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(examples) / options.batch_size)
    total = per_epoch * options.epochs
    step = 0
    ckpt = load_checkpoint(checkpoint_dir)
    if ckpt is not None:
        if ckpt.meta.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{checkpoint_dir}: checkpoint was made with other options or data ({ckpt.meta.get('fingerprint')} vs "
                f"{fingerprint}); rerun with the same options, or use a new --out"
            )
        set_peft_model_state_dict(peft_model, ckpt.adapter)
        ckpt.restore(optimizer)
        step, result.steps, result.resumed_from = ckpt.step, list(ckpt.meta["log"]), ckpt.step
    with recomputing(peft_model, options.gradient_checkpointing):
        peft_model.train()
        t_start = time.perf_counter()
        for epoch in range(step // per_epoch, options.epochs):
            batches = plan_batches(examples, options, epoch)
            for position in range(step - epoch * per_epoch, per_epoch):
                batch = [examples[i] for i in batches[position]]
                if options.threads or (options.auto_threads and step % 10 == 0):
                    apply_threads(options.threads, busy=step > 0)
                lr = lr_at(step, total, options)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                loss, tokens, target_tokens, parts = accumulate(
                    loss_fn, peft_model, batch, options.max_batch_tokens, bf16
                )
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.steps.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": round(float(loss), 5),
                        **{name: round(value, 5) for name, value in parts.items()},  # e.g. hard and kd, apart
                        "lr": lr,
                        "tokens": tokens,
                        "target_tokens": target_tokens,
                        "seconds": round(time.perf_counter() - t0, 4),
                        "threads": torch.get_num_threads(),
                    }
                )
                if progress:
                    progress(step, total, float(loss))
                if step % options.save_every == 0 and step < total:
                    save_checkpoint(
                        checkpoint_dir,
                        step,
                        lora_state(peft_model),
                        optimizer,
                        {"fingerprint": fingerprint, "log": result.steps},
                    )
    peft_model.eval()
    result.seconds = time.perf_counter() - t_start
    result.train_tokens = sum(s["tokens"] for s in result.steps)
    return result


@torch.no_grad()
def mean_loss(peft_model, examples: Sequence[Example], pad_id: int, options: TrainOptions) -> float:
    """Token-weighted mean target loss over examples (no dropout): the before/after measure of learning."""
    peft_model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), options.batch_size):
        batch = examples[start : start + options.batch_size]
        loss, _, n = batch_loss(peft_model, batch, pad_id, options, use_bf16(options))
        total += float(loss) * n
        count += n
    return total / max(count, 1)
