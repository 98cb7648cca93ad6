"""Experiment fixtures: a 2-stage stack with LoRA adapters on the tiny model, and spec files written around it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fslm.settings import get_settings

REAL_DATA = get_settings().data_dir
needs_data = pytest.mark.skipif(
    not (REAL_DATA / "README.md").is_file(), reason=f"benchmark data dir {REAL_DATA} not present (set FSLM_DATA_DIR)"
)


def tiny_stack(model_dir: Path, adapters: dict[str, Path]) -> dict:
    return {
        "name": "tiny2",
        "base_model": str(model_dir),
        "stages": [
            {
                "name": "intent",
                "instruction": "Restate the question.",
                "generation": {"max_new_tokens": 5},
                "adapter": str(adapters["intent"]),
            },
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "intent"],
                "generation": {"max_new_tokens": 6},
                "adapter": str(adapters["answer"]),
            },
        ],
    }


@pytest.fixture()
def stack_file(tiny_model_dir, tiny_adapters, tmp_path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(tiny_stack(tiny_model_dir, tiny_adapters)))
    return path


def write_spec(folder: Path, spec: dict, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


ARC_EASY = [
    {"query": "Question: Which gas do plants take in?", "choices": ["oxygen", "carbon dioxide", "helium"], "gold": 1},
    {"query": "Question: What has eight legs?", "choices": ["a spider", "a dog", "a bird", "a fish"], "gold": 0},
    {"query": "Question: Water boils at what temperature?", "choices": ["10 degrees", "100 degrees"], "gold": 1},
]


@pytest.fixture()
def tiny_data(tmp_path, monkeypatch) -> Path:
    """FSLM_DATA_DIR -> a folder with 3 ARC-Easy records (the real layout); workers inherit the variable."""
    import json

    from fslm.settings import reset_settings

    root = tmp_path / "data"
    (root / "arc_easy").mkdir(parents=True)
    (root / "arc_easy" / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC_EASY))
    monkeypatch.setenv("FSLM_DATA_DIR", str(root))
    reset_settings()
    yield root
    reset_settings()
