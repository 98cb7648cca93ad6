"""Training checkpoints without pickle: LoRA weights, optimizer moments and RNG state as safetensors, the rest as JSON.

Layout: `<out>/checkpoints/<stage>/step-0000050/{adapter,optimizer,rng}.safetensors + state.json`, and `latest.json`
naming the newest complete one. Each checkpoint is written to a temp folder and renamed, then `latest.json` is
replaced atomically, so a kill at any instant leaves the previous checkpoint usable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fslm.errors import DataError
from fslm.io import read_json_object, write_json


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{index}.{name}"] = (
                (value if torch.is_tensor(value) else torch.tensor(value)).detach().clone().contiguous()
            )
    return tensors, state["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@dataclass
class Checkpoint:
    step: int
    meta: dict  # fingerprint, log so far, epoch position
    adapter: dict[str, torch.Tensor]
    folder: Path

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        try:
            _restore_optimizer(optimizer, load_file(self.folder / "optimizer.safetensors"), self.meta["param_groups"])
            torch.set_rng_state(load_file(self.folder / "rng.safetensors")["torch"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
            raise DataError(_unreadable(self.folder.parent, err)) from None


def save_checkpoint(
    root: Path, step: int, adapter: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, meta: dict
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    opt_tensors, groups = _optimizer_tensors(optimizer)
    save_file({k: v.detach().contiguous() for k, v in adapter.items()}, tmp / "adapter.safetensors")
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    write_json(tmp / "state.json", {**meta, "step": step, "param_groups": groups})
    final = root / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json(root / "latest.json", {"step": step, "folder": final.name})
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under `root`, or None. Checkpoints are written atomically, but a disk that
    filled up or a hand edit can still damage one: every file is read here, and any damage is one DataError."""
    latest = root / "latest.json"
    if not latest.is_file():
        return None
    try:
        pointer = _json_object(latest)
        folder = root / Path(str(pointer["folder"])).name
        meta = _json_object(folder / "state.json")
        step = int(pointer["step"])
        if not isinstance(meta.get("log"), list) or not isinstance(meta.get("param_groups"), list):
            raise ValueError(f"{folder / 'state.json'} lacks its 'log' or 'param_groups' list")
        adapter = load_file(folder / "adapter.safetensors")
    except (DataError, OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise DataError(_unreadable(root, err)) from None
    return Checkpoint(step, meta, adapter, folder)


def _unreadable(root: Path, err: BaseException) -> str:
    return f"{root}: unreadable checkpoint ({type(err).__name__}: {err}); delete {root} to restart this stage"


def _json_object(path: Path) -> dict:
    """A JSON object file fslm wrote (checkpoint state, done marker); anything else is a DataError naming it."""
    return read_json_object(path)


def mark_done(root: Path, meta: dict) -> None:
    """The stage's adapter is saved: later reruns skip it. Intermediate checkpoints are no longer needed."""
    write_json(root / "done.json", meta)
    for old in root.glob("step-*"):
        shutil.rmtree(old, ignore_errors=True)
    (root / "latest.json").unlink(missing_ok=True)


def load_done(root: Path) -> dict | None:
    """The done marker of a trained stage (its fingerprint and log entry), or None."""
    path = root / "done.json"
    if not path.is_file():
        return None
    done = _json_object(path)
    entry = done.get("log_entry")
    if "fingerprint" not in done or not isinstance(entry, dict) or not isinstance(entry.get("summary"), dict):
        raise DataError(f"{path}: expected 'fingerprint' and a 'log_entry' with a 'summary'; delete it to retrain")
    return done
