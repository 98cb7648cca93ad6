"""Stacks of an experiment: where each system's stack comes from, and its variants written out as YAML files.

A variant (`from:` another system, `patch:` what differs) is written to `<out>/stacks/<system>.yaml` with adapter
and index paths relative to that file, so the results folder moves as a whole and each evaluated variant is a file
anyone can `fslm run --stack`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fslm.config import (
    StackConfig,
    default_stack_path,
    keep_stages,
    load_stack_config,
    parse_stack_config,
    without_stage,
)
from fslm.errors import ConfigError
from fslm.experiment.spec import ExperimentSpec, PatchSpec, is_stack_file
from fslm.io import write_atomic

STACKS, TRAIN = "stacks", "train"


def train_dir(spec: ExperimentSpec, step: str) -> Path:
    return spec.out_dir / TRAIN / step


def stack_ref_path(spec: ExperimentSpec, ref: str) -> Path:
    """'default', a YAML path (relative to the spec) or a finetune step's output stack."""
    if ref == "default":
        return default_stack_path()
    if is_stack_file(ref):
        return spec.resolve(ref)
    return train_dir(spec, ref) / "stack.yaml"


def stack_step(spec: ExperimentSpec, name: str) -> str | None:
    """The training step whose output system `name`'s stack is (following `from`), if any."""
    system = spec.systems[name]
    while system.from_ is not None:
        system = spec.systems[system.from_]
    if system.stack is not None and not is_stack_file(system.stack):
        return system.stack
    return None


def _chain(spec: ExperimentSpec, name: str) -> list[str]:
    """`name` and the systems it derives from, root first."""
    chain = [name]
    while spec.systems[chain[0]].from_ is not None:
        chain.insert(0, spec.systems[chain[0]].from_)
    return chain


def is_variant(spec: ExperimentSpec, name: str) -> bool:
    return any(spec.systems[n].patch is not None for n in _chain(spec, name))


def system_stack(spec: ExperimentSpec, name: str) -> StackConfig:
    """The stack system `name` runs: its root stack with every patch along its `from` chain applied."""
    chain = _chain(spec, name)
    root = spec.systems[chain[0]]
    assert root.stack is not None
    path = stack_ref_path(spec, root.stack)
    try:
        cfg = load_stack_config(path)
    except ConfigError as err:
        raise ConfigError(f"systems.{chain[0]}.stack: {err}") from None
    for link in chain:
        patch = spec.systems[link].patch
        if patch is not None:
            cfg = apply_patch(spec, cfg, patch, link)
    return cfg


def stack_path(spec: ExperimentSpec, name: str) -> Path:
    """A stack file to evaluate system `name` with: its own file, or its variant written under <out>/stacks/."""
    if not is_variant(spec, name):
        root = spec.systems[_chain(spec, name)[0]]
        assert root.stack is not None
        return stack_ref_path(spec, root.stack)
    path = spec.out_dir / STACKS / f"{name}.yaml"
    text = relative_yaml(system_stack(spec, name), path)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, text)
    return path


def _absolute(cfg: StackConfig) -> dict:
    """The stack as data with adapter and index paths absolute (a variant is written elsewhere than its source)."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    for stage, raw in zip(cfg.stages, data["stages"], strict=True):
        if stage.adapter is not None:
            raw["adapter"] = str(cfg.adapter_path(stage))
        if stage.retrieve is not None:
            raw["retrieve"]["index"] = str(cfg.index_path(stage))
    return data


def apply_patch(spec: ExperimentSpec, cfg: StackConfig, patch: PatchSpec, system: str) -> StackConfig:
    """Stage fields, then adapters, then drop, then keep; the result is validated like any stack file."""
    where = f"{spec.source_path or spec.name}: systems.{system}.patch"
    data = _absolute(cfg)
    stages = {s["name"]: s for s in data["stages"]}
    for stage, fields in patch.stages.items():
        if stage not in stages:
            raise ConfigError(f"{where}.stages.{stage}: stack {cfg.name!r} has no such stage; stages: {list(stages)}")
        for key, value in fields.items():
            if value is None:
                stages[stage].pop(key, None)
            elif isinstance(value, dict) and isinstance(stages[stage].get(key), dict):
                stages[stage][key] = {**stages[stage][key], **value}
            else:
                stages[stage][key] = value
        if isinstance(fields.get("adapter"), str):
            stages[stage]["adapter"] = str(spec.resolve(fields["adapter"]))
        index = (fields.get("retrieve") or {}).get("index") if isinstance(fields.get("retrieve"), dict) else None
        if isinstance(index, str):
            stages[stage]["retrieve"]["index"] = str(spec.resolve(index))
    for stage, adapter in patch.adapters.items():
        if stage not in stages:
            raise ConfigError(f"{where}.adapters.{stage}: stack {cfg.name!r} has no such stage; stages: {list(stages)}")
        if adapter is None:
            stages[stage].pop("adapter", None)
        else:
            stages[stage]["adapter"] = str(spec.resolve(adapter))
    data["name"] = patch.name or system
    if patch.base_model is not None:
        local = spec.resolve(patch.base_model)
        data["base_model"] = str(local) if local.exists() else patch.base_model
    try:
        out = parse_stack_config(data, where, cfg.source_path)
        for i, stage in enumerate(patch.drop):
            if stage not in [s.name for s in out.stages]:
                raise ConfigError(f"{where}.drop.{i}: no stage {stage!r}; stages: {[s.name for s in out.stages]}")
            out = without_stage(out, stage)
        if patch.keep is not None:
            names = [s.name for s in out.stages]
            for i, stage in enumerate(patch.keep):
                if stage not in names:
                    raise ConfigError(f"{where}.keep.{i}: no stage {stage!r}; stages: {names}")
            out = keep_stages(out, patch.keep)
    except ConfigError as err:
        text = str(err)
        raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None
    return out.model_copy(update={"name": patch.name or system})


def relative_yaml(cfg: StackConfig, path: Path) -> str:
    """The stack's YAML as written at `path`: adapter and index paths relative to it where possible."""
    data = _absolute(cfg)
    for raw in data["stages"]:
        if "adapter" in raw:
            raw["adapter"] = _relative(raw["adapter"], path.parent)
        if "retrieve" in raw:
            raw["retrieve"]["index"] = _relative(raw["retrieve"]["index"], path.parent)
    return parse_stack_config(data, str(path)).to_yaml()


def _relative(target: str, folder: Path) -> str:
    try:
        return os.path.relpath(Path(target).resolve(), folder.resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        return target
