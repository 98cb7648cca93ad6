"""Checks before transformers sees a file: config JSON parses, weights are safetensors with a sound header (pickle
files are refused: unpickling runs code from the file), a config fits its weights, an adapter folder is complete.
A bad file is one ModelFileError naming it, never a traceback from deep inside a loader."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fslm.errors import FslmError, ModelFileError
from fslm.io import read_json_object as io_read_json_object

T = TypeVar("T")

MAX_JSON_BYTES = 16 << 20  # config.json / adapter_config.json / index files are a few KiB
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_ONLY = (
    "fslm loads safetensors only: pickle files can run code when loaded. Re-save the model with "
    "save_pretrained(folder, safe_serialization=True)"
)


def read_json_object(path: Path) -> dict:
    """A small JSON object file (model or adapter config); anything else is a ModelFileError naming it."""
    return io_read_json_object(path, limit=MAX_JSON_BYTES, error=ModelFileError)


def check_safetensors(path: Path) -> None:
    """The safetensors header parses and every tensor lies inside the file (a truncated copy fails here)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "not a usable file"
        raise ModelFileError(f"{path}: not a valid safetensors file ({exc}); re-save or re-download it") from None


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers will read: model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(f"{index}: expected a non-empty 'weight_map' of tensor name -> shard file")
        shards = sorted({str(v) for v in weight_map.values()})
        bad = [v for v in shards if Path(v).name != v or not v.endswith(".safetensors")]
        if bad:
            raise ModelFileError(f"{index}: 'weight_map' names {bad[0]!r}, not a .safetensors file in this folder")
        return [folder / v for v in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    pickles = _pickles(folder)
    if pickles:
        raise ModelFileError(f"{folder}: only pickle weights ({', '.join(pickles)}); {SAFETENSORS_ONLY}")
    raise ModelFileError(f"{folder}: no model.safetensors (nor model.safetensors.index.json) in this model folder")


def check_model_folder(folder: Path) -> None:
    """A Hugging Face model folder fslm will load: config.json is a JSON object, the weights are sound safetensors,
    and the model config.json describes is not much bigger than those weights (`_check_config_fits_weights`)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFileError(f"{folder}: no config.json (not a Hugging Face model folder)")
    data = read_json_object(config)
    files = _weight_files(folder)
    for weights in files:
        if not weights.is_file():
            raise ModelFileError(f"{weights}: missing (named by model.safetensors.index.json)")
        check_safetensors(weights)
    _check_config_fits_weights(folder, data, files)


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)\.")


def _check_config_fits_weights(folder: Path, config: dict, files: list[Path]) -> None:
    """transformers initialises weights a checkpoint lacks instead of refusing: a config.json claiming 20000 layers
    over a 2-layer checkpoint makes it allocate tens of GB. So the layer count is checked against the layer indices
    in the tensor names (cheap, and it keeps the next step small), then the model is built on the meta device (no
    memory) and its parameter count compared with the checkpoint's."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    stored, layers = 0, set()
    for file in files:
        with safe_open(str(file), framework="numpy") as fh:
            for key in fh.keys():
                stored += _numel(fh.get_slice(key).get_shape())
                layers.update(int(m) for m in LAYER_INDEX.findall(key))
    claimed = next((config[k] for k in LAYER_COUNT_KEYS if isinstance(config.get(k), int)), None)
    if claimed is not None and claimed > (max(layers) + 1 if layers else 0):
        raise ModelFileError(
            f"{folder / 'config.json'}: {claimed} layers, but the weights hold {len(layers)}; config.json does not "
            "belong to these weights"
        )

    def meta_count() -> int:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        return sum(p.numel() for p in model.parameters())

    wanted = _guarded(folder, meta_count)
    if wanted > stored + stored // 10 + (1 << 24):
        raise ModelFileError(
            f"{folder / 'config.json'}: describes a model of {wanted:,} parameters, but the weights hold {stored:,}; "
            "config.json does not belong to these weights"
        )


def check_adapter_folder(folder: Path) -> None:
    """A PEFT adapter folder fslm will load: adapter_config.json is a JSON object naming its peft_type, and
    adapter_model.safetensors is sound. An adapter_model.bin alone is refused (pickle)."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise ModelFileError(f"no adapter_config.json in {folder}")
    peft_type = read_json_object(config).get("peft_type")
    if not isinstance(peft_type, str):
        raise ModelFileError(f"{config}: expected a string 'peft_type' (e.g. \"LORA\"), got {peft_type!r}")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        pickles = _pickles(folder)
        why = (
            f"only pickle weights ({', '.join(pickles)}); {SAFETENSORS_ONLY}"
            if pickles
            else "only safetensors are loaded"
        )
        raise ModelFileError(f"no adapter_model.safetensors in {folder} ({why})")
    check_safetensors(weights)


def adapter_params(folder: Path) -> int:
    """Parameter count of a LoRA adapter, read from its safetensors header (no tensors loaded): what cost
    accounting adds for an adapter on top of its base model."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="numpy") as fh:
        return sum(_numel(fh.get_slice(key).get_shape()) for key in fh.keys())


def _guarded(what: Path, load: Callable[[], T]) -> T:
    """Run a transformers loader on files that passed fslm's checks; whatever it still refuses (an unsupported
    architecture, a config value it cannot build, missing tokenizer files) becomes one error naming the file."""
    try:
        return load()
    except FslmError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many unrelated types for one "cannot load"
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelFileError(f"{what}: cannot load this model ({type(exc).__name__}: {first})") from None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
