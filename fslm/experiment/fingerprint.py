"""What a run folder's rows were computed with, so that an edited spec or retrained adapters never pass for done.

The runner writes `<run>/experiment.json` when it starts a job: the system's definition (the model reference, or
the stack as the worker reads it with each adapter and index path replaced by the sha256 of its files) and the
evaluation settings that change a row. A run whose file differs from what the spec gives now is *stale*: the runner moves it
aside (`<run>.stale-N`) and evaluates again. Item selection (tasks, limit) is not part of it: `evaluate` adds
missing items to a run and leaves out the rows it does not plan.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fslm.collaborate.proxy_params import parse_expert_delta
from fslm.config import StackConfig, parse_stack_config
from fslm.errors import ConfigError, FslmError
from fslm.experiment.spec import ExperimentSpec
from fslm.experiment.variants import STACKS, is_variant, relative_yaml, stack_ref_path, system_stack
from fslm.io import load_yaml, write_json
from fslm.retrieve.index import MANIFEST
from fslm.retrieve.recipe import RECIPE
from fslm.stack_cache import adapter_digest

FINGERPRINT = "experiment.json"


def stack_text(spec: ExperimentSpec, name: str) -> tuple[Path, str] | None:
    """(path, YAML text) of the stack file system `name` is evaluated with, without writing anything; None when it
    does not exist yet (a training step's output)."""
    if is_variant(spec, name):
        path = spec.out_dir / STACKS / f"{name}.yaml"
        return path, relative_yaml(system_stack(spec, name), path)
    root = spec.systems[name]
    while root.from_ is not None:
        root = spec.systems[root.from_]
    assert root.stack is not None
    path = stack_ref_path(spec, root.stack)
    return (path, path.read_text(encoding="utf-8")) if path.is_file() else None


def _canonical(cfg: StackConfig, adapters: bool) -> dict:
    """The stack as data with every path replaced by the sha256 of what it points at: moving the experiment, its
    stacks or their adapters changes nothing; retraining an adapter in place does."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    for stage, raw in zip(cfg.stages, data["stages"], strict=True):
        if stage.adapter is not None:
            raw["adapter"] = adapter_digest(cfg.adapter_path(stage)) if adapters else None
        index = cfg.index_path(stage)
        if index is not None:  # a built index by its manifest; a recipe folder (built on first use) by its recipe
            found = index / MANIFEST if (index / MANIFEST).is_file() else index / RECIPE
            raw["retrieve"]["index"] = hashlib.sha256(found.read_bytes()).hexdigest()
    return data


def _delta(spec: ExperimentSpec, name: str) -> list[dict]:
    """TUNED and BASE as given, each adapter replaced by the sha256 of its files (moving it changes nothing)."""
    delta = spec.expert_delta(name)
    assert delta is not None
    return [
        {"model": given.model, "adapter": adapter_digest(ref.adapter)}
        for given, ref in zip(
            parse_expert_delta(spec.systems[name].expert_delta or ""), parse_expert_delta(delta), strict=True
        )
    ]


def fingerprint(spec: ExperimentSpec, name: str, split: str | None, num_fewshot: int) -> dict | None:
    """The fingerprint of evaluating system `name` on `split`; None when it cannot be known yet."""
    system = spec.systems[name]
    settings = {"split": split, "num_fewshot": num_fewshot, "gen_max_tokens": spec.evaluation.gen_max_tokens}
    if system.is_model:
        if system.dtype is not None:  # only when given: runs made before the field existed stay valid
            settings["dtype"] = system.dtype
        if system.expert_delta is None:
            return {"model": system.model, **settings}
        try:
            delta = _delta(spec, name)
        except (FslmError, OSError):
            return None  # a missing adapter: the job itself reports it
        return {"model": system.model, "expert_delta": delta, "delta_alpha": system.delta_alpha, **settings}
    try:
        found = stack_text(spec, name)
        if found is None:
            return None
        path, text = found
        cfg = parse_stack_config(load_yaml(text, str(path), error=ConfigError), str(path), path.resolve())
        stack = _canonical(cfg, system.adapters)
    except (FslmError, OSError):
        return None  # a broken stack or a missing adapter or index: the job itself reports it
    return {"stack": stack, "answer_format": system.answer_format, **settings}


def recorded(folder: Path) -> dict | None:
    path = folder / FINGERPRINT
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def record(folder: Path, value: dict) -> None:
    write_json(folder / FINGERPRINT, value)


def move_aside(folder: Path) -> Path:
    """Rename a stale run folder to `<name>.stale-N` (nothing is deleted)."""
    n = 1
    while folder.with_name(f"{folder.name}.stale-{n}").exists():
        n += 1
    target = folder.with_name(f"{folder.name}.stale-{n}")
    folder.rename(target)
    return target
