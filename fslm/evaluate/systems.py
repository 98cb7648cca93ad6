"""Systems under evaluation: a model alone, a stack, or a stack with its adapters switched off, and `load_system`,
which builds one from CLI-style choices.

Every system answers a batch of items through the same two calls (`answer_choices`, `answer_generate`), so
baselines and stacks are scored by identical code. Each returns one `Outcome` per item with its costs. The protocol
and `Outcome` live in `fslm.evaluate.outcome`, `ModelSystem` in `fslm.evaluate.model_system`, `StackSystem` and its
answer formats in `fslm.evaluate.stack_system`; all are importable from here.
"""

from __future__ import annotations

import time
from pathlib import Path

from fslm.config import default_stack_path, load_stack_config
from fslm.engine import load_engine
from fslm.errors import InputError
from fslm.evaluate.model_system import ModelSystem
from fslm.evaluate.outcome import Outcome, Shots, System
from fslm.evaluate.stack_system import ANSWER_FORMATS, RAW_FORMATS, StackSystem
from fslm.stack import Stack
from fslm.stack_cache import StageCache
from fslm.stages.endpoint_config import load_stack_engine

__all__ = [
    "ANSWER_FORMATS",
    "RAW_FORMATS",
    "ModelSystem",
    "Outcome",
    "Shots",
    "StackSystem",
    "System",
    "load_system",
]


def load_system(
    *,
    model: str | None = None,
    stack: str | Path | None = None,
    adapters: bool = True,
    base: bool = False,
    dtype: str | None = None,
    stage_cache: str | Path | None = None,
    answer_format: str = "stack",
    backend: str | None = None,
    expert_delta: str | None = None,
    delta_alpha: float = 1.0,
) -> ModelSystem | StackSystem:
    """Build a system from CLI-style choices: --model M, or --stack S (the packaged default when S is
    "default"), optionally without its adapters, or its base model alone (`base=True`). `stage_cache`: a
    `StageCache` file whose greedy stage outputs a stack reuses (and adds to). `backend`: the inference engine (default:
    the stack's `engine:`, or hf for a model alone). `expert_delta` ("TUNED:BASE", each MODEL[+ADAPTER_DIR]): the
    model proxy-tuned by that pair, weighted by `delta_alpha` (fslm.collaborate.proxy_engine). The system keeps these
    choices, paths made absolute, in `load_args`: what a Ray worker loads its own copy from."""
    system = _load_system(
        model, stack, adapters, base, dtype, stage_cache, answer_format, backend, expert_delta, delta_alpha
    )
    cache = None if stage_cache is None else str(Path(stage_cache).resolve())  # a Ray worker may start elsewhere
    system.load_args = dict(model=_absolute(model), stack=_absolute(stack), adapters=adapters, base=base, dtype=dtype)
    system.load_args |= dict(stage_cache=cache, answer_format=answer_format, backend=backend)
    if expert_delta is not None:
        from fslm.collaborate.proxy_params import resolve_expert_delta

        system.load_args |= dict(expert_delta=resolve_expert_delta(expert_delta, Path.cwd()), delta_alpha=delta_alpha)
    return system


def _proxy_system(model, expert_delta: str, delta_alpha: float, dtype: str | None) -> ModelSystem:
    """A model steered by a tuned/base pair, scored and decoding under the fused distribution."""
    from fslm.collaborate.proxy_engine import load_proxy_engine

    t0 = time.perf_counter()
    engine = load_proxy_engine(model, expert_delta, delta_alpha, dtype=dtype or "float32")
    details = {"proxy_tuning": engine.describe()}
    return ModelSystem(engine, load_seconds=round(time.perf_counter() - t0, 2), details=details)


def check_expert_delta(
    model: str | None, expert_delta: str | None, delta_alpha: float = 1.0, backend: str | None = None
) -> None:
    """Where proxy-tuning applies (a model alone, on the hf engine) and a well-formed TUNED:BASE and alpha, before
    any load."""
    if expert_delta is None:
        return
    from fslm.collaborate.proxy_params import ProxyTuneParams, check_adapter_dirs

    if model is None:
        raise InputError("--expert-delta applies to --model systems only (proxy-tuning of one model, not a stack)")
    if (backend or "hf") != "hf":
        raise InputError(f"--engine {backend}: --expert-delta runs on transformers' logits (--engine hf)")
    ProxyTuneParams(alpha=delta_alpha)
    check_adapter_dirs(expert_delta)


def _absolute(ref: str | Path | None) -> str | None:
    """A reference that is a path on disk, made absolute; a name (or "default") as given."""
    if ref is None or str(ref) == "default" or not Path(ref).exists():
        return None if ref is None else str(ref)
    return str(Path(ref).resolve())


def _load_system(
    model, stack, adapters, base, dtype, stage_cache, answer_format, backend, expert_delta=None, delta_alpha=1.0
) -> ModelSystem | StackSystem:
    if (model is None) == (stack is None):
        raise InputError("give exactly one of --model (a model reference) or --stack (a stack YAML, or 'default')")
    check_expert_delta(model, expert_delta, delta_alpha, backend)
    if stage_cache is not None and (model is not None or base):
        raise InputError("--stage-cache applies to --stack systems only (a model alone has no stages)")
    if answer_format not in ANSWER_FORMATS:
        raise InputError(f"answer format {answer_format!r}: expected one of {', '.join(ANSWER_FORMATS)}")
    if answer_format != "stack" and (model is not None or base):
        raise InputError("--answer-format applies to --stack systems only")
    t0 = time.perf_counter()
    if model is not None:
        if not adapters or base:
            raise InputError("--no-adapters and --base apply to --stack only")
        if expert_delta is not None:
            return _proxy_system(model, expert_delta, delta_alpha, dtype)
        engine = load_engine(model, dtype=dtype or "float32", backend=backend or "hf")
        return ModelSystem(engine, load_seconds=round(time.perf_counter() - t0, 2))
    path = default_stack_path() if str(stack) == "default" else Path(str(stack))
    cfg = load_stack_config(path)
    if base:
        engine = load_stack_engine(cfg, cfg.base_ref, backend=backend, dtype=dtype)
        return ModelSystem(engine, name=f"model:{cfg.base_model}", load_seconds=round(time.perf_counter() - t0, 2))
    if not adapters:
        cfg = cfg.without_adapters()
    engine = load_stack_engine(cfg, cfg.base_ref, backend=backend, dtype=dtype)
    cache = StageCache(stage_cache) if stage_cache is not None else None
    return StackSystem(
        Stack(cfg, engine, cache=cache, backend=backend),
        load_seconds=round(time.perf_counter() - t0, 2),
        adapters=adapters,
        answer_format=answer_format,
    )
