"""A stack's fingerprint (run.json's stack_config_sha256) names the system, not where it lies on disk: the same stack
in two clones matches, an edited stack or a retrained adapter does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from fslm.config import load_stack_config
from fslm.engine import EngineStats
from fslm.evaluate import StackSystem
from fslm.stack import Stack


class AdapterSink:
    """Just enough of an Engine for a Stack to register adapters: the fingerprint never runs a model."""

    model_ref = "sink"
    context_window = 512
    params = 1

    def __init__(self) -> None:
        self.stats = EngineStats()
        self.loaded: dict[str, str] = {}

    def add_adapter(self, name: str, path: str) -> None:
        self.loaded[name] = path

    def adapters(self) -> list[str]:
        return list(self.loaded)


def _clone(root: Path, tiny_model_dir: Path, tiny_adapters: dict[str, Path], *, absolute: bool = False) -> Path:
    """root/stacks/tiny.yaml naming root/adapters/<stage> (relative to the stack file, or absolute)."""
    for name, folder in tiny_adapters.items():
        shutil.copytree(folder, root / "adapters" / name)
    stages = [
        {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 8}},
        {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "intent"]},
    ]
    for stage in stages:
        adapter = root / "adapters" / stage["name"]
        stage["adapter"] = str(adapter) if absolute else f"../adapters/{stage['name']}"
    path = root / "stacks" / "tiny.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"name": "tiny", "base_model": str(tiny_model_dir), "stages": stages}))
    return path


def _fingerprint(path: Path) -> str:
    return StackSystem(Stack(load_stack_config(path), AdapterSink())).config_sha256


def test_the_same_stack_in_two_clones_has_one_fingerprint(tiny_model_dir, tiny_adapters, tmp_path):
    a = _fingerprint(_clone(tmp_path / "a", tiny_model_dir, tiny_adapters))
    assert a == _fingerprint(_clone(tmp_path / "elsewhere" / "b", tiny_model_dir, tiny_adapters))
    # Absolute paths to the clone's own adapters name the same files relative to the stack file.
    assert a == _fingerprint(_clone(tmp_path / "c", tiny_model_dir, tiny_adapters, absolute=True))


def test_a_retrained_adapter_or_an_edited_stack_changes_it(tiny_model_dir, tiny_adapters, tmp_path):
    path = _clone(tmp_path / "a", tiny_model_dir, tiny_adapters)
    before = _fingerprint(path)
    answer = tmp_path / "a" / "adapters" / "answer" / "adapter_model.safetensors"
    shutil.copyfile(tiny_adapters["intent"] / "adapter_model.safetensors", answer)  # same shape, other weights
    retrained = _fingerprint(path)
    assert retrained != before
    path.write_text(path.read_text().replace("Restate.", "Restate briefly."))
    assert _fingerprint(path) not in (before, retrained)
