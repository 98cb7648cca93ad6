"""Token-level knowledge distillation: the student's LoRA is trained on a mix of the hard target cross-entropy and the
KL divergence from a frozen teacher's softened next-token distribution, at the same target positions.

    loss = mix * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - mix) * CE(student, target)

Both terms are means over the batch's target tokens. The teacher runs in the same batches under `torch.no_grad`,
and only its logits at the target positions are kept, for one batch at a time: memory does not grow with the data.
Comparing logits token by token needs one vocabulary, so a teacher with another tokenizer is refused (choice-level
distillation, `fslm.finetune.choice_kd`, needs none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fslm.engine import Engine, load_engine, require_transformers, same_tokenizer
from fslm.errors import ConfigError
from fslm.finetune.examples import Example
from fslm.finetune.options import TrainOptions
from fslm.finetune.trainer import batch_tensors, target_logits

TEACHER_ADAPTER = "kd-teacher"  # the name the teacher's adapter is loaded under in its own engine


@dataclass
class Teacher:
    """A frozen teacher: its engine and the adapter it runs with (None: its base weights)."""

    engine: Engine
    adapter: str | None = None
    adapter_path: str | None = None  # where the adapter came from: part of the teacher's identity in score caches

    @property
    def id(self) -> str:
        adapter = self.adapter_path or self.adapter
        return self.engine.model_ref + (f"+{adapter}" if adapter else "")


def load_teacher(options: TrainOptions, engine: Engine | None = None) -> Teacher:
    """The teacher `options.kd` names (or `engine`, already loaded), with `options.kd_adapter` added to it."""
    assert options.kd is not None
    teacher = engine or load_engine(options.kd, dtype="float32")
    adapter = None
    if options.kd_adapter is not None:
        teacher.add_adapter(TEACHER_ADAPTER, options.kd_adapter)
        adapter = TEACHER_ADAPTER
    return Teacher(teacher, adapter, options.kd_adapter)


def check_token_teacher(student, teacher: Teacher) -> None:
    """Token-level KD compares the two models' distributions over one vocabulary, with a model of its own."""
    engine = require_transformers(teacher.engine, "token-level distillation")
    if engine is student:
        raise ConfigError("--kd: the teacher needs an engine of its own (training changes the student's model)")
    if not same_tokenizer(student.tokenizer, engine.tokenizer):
        raise ConfigError(
            f"--kd {teacher.engine.model_ref}: its tokenizer differs from the student's ({student.model_ref}); "
            "token-level distillation compares next-token distributions over one vocabulary: use a teacher of the "
            "student's family, or --kd-level choice (option scores, no shared vocabulary needed)"
        )
    needed = len(student.tokenizer)
    sizes = (_vocab(student.base_model), _vocab(engine.base_model))
    if min(sizes) < needed:
        raise ConfigError(f"--kd: an output layer of {min(sizes)} rows is smaller than the tokenizer ({needed} ids)")


def _vocab(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def kd_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over rows (the last dimension is the distribution). The T^2 keeps
    the gradient's scale comparable across temperatures (Hinton et al., 2015)."""
    width = min(student.shape[-1], teacher.shape[-1])  # output layers padded past the tokenizer differ in size
    s = F.log_softmax(student[..., :width].float() / temperature, dim=-1)
    t = F.log_softmax(teacher[..., :width].float() / temperature, dim=-1)
    return temperature**2 * (t.exp() * (t - s)).sum(-1).mean()


def token_kd_loss(
    peft_model,
    teacher: Teacher,
    batch: Sequence[Example],
    pad_id: int,
    options: TrainOptions,
    bf16: bool,
) -> tuple[torch.Tensor, int, int, dict[str, float]]:
    """The mixed loss of one batch, (loss, real tokens, target tokens, {"hard": CE, "kd": KD term})."""
    ids, mask, rows, cols, labels = batch_tensors(batch, pad_id)
    with torch.no_grad(), teacher.engine.hf_model(teacher.adapter) as model:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            soft = target_logits(model, ids, mask, rows, cols, options.target_logits_only).float()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = target_logits(peft_model, ids, mask, rows, cols, options.target_logits_only)
    hard = F.cross_entropy(logits.float(), labels)
    kd = kd_term(logits, soft, options.kd_temperature)
    loss = options.kd_mix * kd + (1 - options.kd_mix) * hard
    return loss, int(mask.sum()), len(labels), {"hard": float(hard.detach()), "kd": float(kd.detach())}


__all__ = [
    "TEACHER_ADAPTER",
    "Teacher",
    "check_token_teacher",
    "kd_term",
    "load_teacher",
    "token_kd_loss",
]
