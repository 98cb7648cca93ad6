"""`fslm stack pack RUN_DIR --out DIR`: a trained stack as a self-contained folder that moves.

A stack written by `fslm finetune` (or an experiment's training step, or a variant) may point at adapters and
indexes anywhere: absolute paths, `../trained_stack/adapters/...`. Packing copies what it runs into one folder:

    DIR/stack.yaml                 adapter: adapters/<stage>, retrieve.index: indexes/<stage>
    DIR/adapters/<stage>/          adapter_config.json + adapter_model.safetensors (nothing else)
    DIR/indexes/<stage>/           a retrieve stage's index folder
    DIR/train_log.json, loss.png   when RUN_DIR has them

The folder is built beside DIR and renamed into place, and validated (`fslm.validate_stack`) before that. Shipping
it as the packaged default is a separate, deliberate commit by a person.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fslm.config import parse_stack_config
from fslm.errors import InputError
from fslm.stack_checks import validate_stack

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXTRAS = ("train_log.json", "loss.png")


def _stack_file(run_dir: Path) -> Path:
    if run_dir.is_file():
        return run_dir
    path = run_dir / "stack.yaml"
    if not path.is_file():
        raise InputError(
            f"{run_dir}: no stack.yaml here; give a folder written by `fslm finetune --out` or a stack YAML"
        )
    return path


def pack_stack(run_dir: str | Path, out: str | Path) -> Path:
    """Copy a trained stack (a run folder or a stack YAML) and everything it runs into `out`; returns out/stack.yaml."""
    source = _stack_file(Path(run_dir))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not an empty folder; pack into a new folder")
    cfg = validate_stack(source)  # every adapter and index is there and loadable before anything is copied
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.pack-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed pack
    tmp.mkdir()
    try:
        data = cfg.model_dump(mode="json", exclude_none=True)
        for stage, raw in zip(cfg.stages, data["stages"], strict=True):
            adapter = cfg.adapter_path(stage)
            if adapter is not None:
                (tmp / "adapters" / stage.name).mkdir(parents=True)
                for name in ADAPTER_FILES:
                    shutil.copyfile(adapter / name, tmp / "adapters" / stage.name / name)
                raw["adapter"] = f"adapters/{stage.name}"
            index = cfg.index_path(stage)
            if index is not None:
                shutil.copytree(index, tmp / "indexes" / stage.name)
                raw["retrieve"]["index"] = f"indexes/{stage.name}"
        for name in EXTRAS:
            if (source.parent / name).is_file():
                shutil.copyfile(source.parent / name, tmp / name)
        packed = parse_stack_config(data, str(out / "stack.yaml"))
        (tmp / "stack.yaml").write_text(packed.to_yaml(), encoding="utf-8")
        validate_stack(tmp / "stack.yaml")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "stack.yaml"


def packed_size(folder: str | Path) -> int:
    """Bytes of every file under a packed folder (what shipping it costs)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


__all__ = ["pack_stack", "packed_size"]
