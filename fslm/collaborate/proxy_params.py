"""What proxy-tuning is asked to do, checked before any model loads (no torch): the fusion weight and the
`TUNED:BASE` model references of `fslm generate --expert-delta`."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from fslm.errors import InputError


@dataclass(frozen=True)
class ProxyTuneParams:
    alpha: float = 1.0  # weight of the expert delta: 0 = the large model alone, 1 = the paper's setting

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise InputError(f"alpha (--delta-alpha) must be a finite number, got {self.alpha!r}")


@dataclass(frozen=True)
class ModelRef:
    """`MODEL[+ADAPTER_DIR]`: a model reference and, optionally, a PEFT LoRA folder it runs with."""

    model: str
    adapter: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        model, plus, adapter = text.strip().partition("+")
        if not model.strip() or (plus and not adapter.strip()):
            raise InputError(f"{text!r}: expected MODEL or MODEL+ADAPTER_DIR")
        return cls(model.strip(), adapter.strip() or None)

    def __str__(self) -> str:
        return self.model + (f"+{self.adapter}" if self.adapter else "")

    def resolved(self, base: Path) -> ModelRef:
        """Paths made absolute against folder `base`: the model when it is a file or folder there (else a name, as
        given) and the adapter folder. What a process started elsewhere (a Ray actor, an experiment worker) loads."""
        model = Path(base) / Path(self.model).expanduser()
        adapter = None if self.adapter is None else str((Path(base) / Path(self.adapter).expanduser()).resolve())
        return ModelRef(str(model.resolve()) if model.exists() else self.model, adapter)


def parse_expert_delta(text: str) -> tuple[ModelRef, ModelRef]:
    """`TUNED:BASE` -> the two references (each `MODEL[+ADAPTER_DIR]`)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise InputError(
            f"--expert-delta {text!r}: expected TUNED:BASE, each MODEL[+ADAPTER_DIR] "
            "(e.g. qwen2.5-coder-0.5b+adapters/gsm8k:qwen2.5-coder-0.5b)"
        )
    return ModelRef.parse(parts[0]), ModelRef.parse(parts[1])


def resolve_expert_delta(text: str, base: Path) -> str:
    """`TUNED:BASE` with each reference's paths made absolute against `base` (ModelRef.resolved)."""
    tuned, untuned = parse_expert_delta(text)
    return f"{tuned.resolved(base)}:{untuned.resolved(base)}"


def check_adapter_dir(ref: ModelRef, what: str) -> None:
    """Before any model loads: the adapter, if any, is a folder."""
    if ref.adapter is not None and not Path(ref.adapter).is_dir():
        raise InputError(f"{what} {ref}: adapter {ref.adapter} is not a folder (a PEFT LoRA adapter folder)")


def check_adapter_dirs(expert_delta: str) -> None:
    """Before any model loads: TUNED:BASE is well formed and each adapter it names is a folder."""
    for ref, role in zip(parse_expert_delta(expert_delta), ("TUNED", "BASE"), strict=True):
        check_adapter_dir(ref, f"--expert-delta {role}")


def adapter_name(path: str) -> str:
    """The name an adapter folder is loaded under: one per folder, so tuned and base can share an engine."""
    return "proxy-" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
