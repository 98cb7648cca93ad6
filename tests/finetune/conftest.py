"""Finetune fixtures: a 3-stage stack on the tiny model and a small distilled file with a learnable pattern."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny_stack(model_dir: Path) -> dict:
    return {
        "name": "tiny",
        "base_model": str(model_dir),
        "max_prompt_tokens": 256,
        "stages": [
            {"name": "intent", "instruction": "Restate.", "sees": ["prompt"], "generation": {"max_new_tokens": 12}},
            {
                "name": "facts",
                "instruction": "Facts.",
                "sees": ["prompt", "intent"],
                "generation": {"max_new_tokens": 12},
            },
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "facts"],
                "template": "Q: {prompt} F: {facts}",
                "generation": {"max_new_tokens": 12},
            },
        ],
    }


def distilled_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        a, b = i % 10, (i * 3) % 10
        out.append(
            {
                "id": f"r{i}",
                "prompt": f"What is {a} plus {b}?",
                "kept": True,
                "filtered": [],
                "hinted": True,
                "targets": {
                    "intent": f"The user wants {a} plus {b}.",
                    "facts": f"{WORDS[a]} and {WORDS[b]}",
                    "answer": f"It is {a + b}.",
                },
            }
        )
    out.append({"id": "dropped", "prompt": "x", "kept": False, "filtered": ["intent:empty"], "targets": {"intent": ""}})
    return out


@pytest.fixture()
def stack_file(tiny_model_dir, tmp_path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(tiny_stack(tiny_model_dir)))
    return path


@pytest.fixture()
def distilled_file(tmp_path) -> Path:
    path = tmp_path / "distilled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in distilled_records(16)))
    return path


@pytest.fixture()
def fresh_engine(tiny_model_dir):
    """Training wraps the base model in LoRA layers and unwraps it; never share that model with other tests."""
    from fslm.engine import load_engine

    return load_engine(str(tiny_model_dir))
