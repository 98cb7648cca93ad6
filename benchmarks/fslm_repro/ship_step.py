"""Step `ship`: the attempt chosen by step `select` becomes the packaged default stack, so `fslm run` uses it.

Its adapters go to <ship_to>/default/adapters/<stage>/ (each folder swapped in whole: copy, then rename). The packaged
default.yaml is left as written by hand when the chosen attempt uses its prompts (attempts 1 and 2); an attempt that
changed a stage's prompts (attempt 3) rewrites it, since adapters trained for other prompts would be run wrongly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import adapters_bytes
from recipe import Recipe
from select_step import chosen_stack

from fslm.config import StackConfig, load_stack_config
from fslm.errors import ConfigError
from fslm.evaluate.store import write_atomic

HEADER = (
    "# The default FSLM stack: four roles on ONE base model, each with a LoRA adapter.\n"
    "# Written by benchmarks/fslm_repro (step `ship`) from {source}: the attempt chosen on held-out items.\n"
)


def _shipped_dir(recipe: Recipe) -> Path:
    return recipe.ship_to / "default" / "adapters"


def _prompts(cfg: StackConfig) -> dict:
    """What a stage does, adapters and naming aside: equal prompts mean the adapters can be swapped alone."""
    data = cfg.without_adapters().model_dump(mode="json", exclude_none=True)
    return {k: v for k, v in data.items() if k not in ("name", "description")}


def _packaged(recipe: Recipe, chosen: StackConfig) -> tuple[StackConfig, StackConfig]:
    """(the packaged config as it should be, as it is), after checking it names the adapters where they go."""
    current = load_stack_config(recipe.ship_to / "default.yaml")
    for i, stage in enumerate(current.stages):
        want = f"default/adapters/{stage.name}"
        if stage.adapter != want:
            raise ConfigError(
                f"{current.source_path}: stages.{i}.adapter is {stage.adapter!r}; expected {want!r} (where the ship step puts it)"
            )
    if [s.name for s in current.stages] != [s.name for s in chosen.stages]:
        raise ConfigError(
            f"{current.source_path}: stages {[s.name for s in current.stages]} differ from the chosen "
            f"stack's {[s.name for s in chosen.stages]} ({chosen.source_path})"
        )
    if _prompts(current) == _prompts(chosen):
        return current, current
    wanted = chosen.model_copy(
        update={
            "name": current.name,
            "description": current.description,
            "stages": [s.model_copy(update={"adapter": f"default/adapters/{s.name}"}) for s in chosen.stages],
        }
    )
    return wanted, current


def done(recipe: Recipe) -> bool:
    """Nothing to ship (smoke scale), or the packaged stack is the chosen attempt: same prompts, same adapter bytes."""
    if recipe.ship_to is None:
        return True
    path = chosen_stack(recipe)
    if not path.is_file():
        return False
    chosen = load_stack_config(path)
    wanted, current = _packaged(recipe, chosen)
    if wanted is not current:
        return False
    for stage in chosen.stages:
        src = chosen.adapter_path(stage)
        if src is None or not src.is_dir():
            return False
        for f in (p for p in src.iterdir() if p.is_file()):
            shipped = _shipped_dir(recipe) / stage.name / f.name
            if not shipped.is_file() or shipped.read_bytes() != f.read_bytes():
                return False
    return True


def run(recipe: Recipe, log=print) -> dict:
    if recipe.ship_to is None:
        return {}
    path = chosen_stack(recipe)
    if not path.is_file():
        raise ConfigError(f"no {path}: run the 'finetune' step first")
    chosen = load_stack_config(path)
    wanted, current = _packaged(recipe, chosen)
    sources = {s.name: chosen.adapter_path(s) for s in chosen.stages}
    for name, src in sources.items():
        if src is None or not (src / "adapter_model.safetensors").is_file():
            raise ConfigError(f"{path}: no trained adapter for stage {name!r} (looked in {src})")
    target = _shipped_dir(recipe)
    target.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        tmp, old = target / f".{name}.tmp", target / f".{name}.old"
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(src, tmp)
        if (target / name).exists():
            (target / name).rename(old)
        tmp.rename(target / name)
        shutil.rmtree(old, ignore_errors=True)
    if wanted is not current:
        write_atomic(recipe.ship_to / "default.yaml", HEADER.format(source=path.parent.name) + wanted.to_yaml())
        log(f"  rewrote {recipe.ship_to / 'default.yaml'}: {path.parent.name} changed stage prompts")
    sizes = adapters_bytes(recipe.ship_to / "default")
    log(f"  shipped {path.parent.name}: {len(sizes)} adapters ({sum(sizes.values())} bytes) to {target}")
    return sizes
