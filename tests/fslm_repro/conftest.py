"""Smoke-scale fixtures for the issue-5 recipe: tiny teacher/student/"big" models, a short-answer Alpaca file and a
4-stage stack shaped like the default one (same stage names and `sees`) whose stop strings a random tiny model hits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model  # tests/conftest.py (tests/ is on sys.path under pytest)

from fslm.settings import get_settings

RECIPE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "fslm_repro"
if str(RECIPE_DIR) not in sys.path:
    sys.path.insert(0, str(RECIPE_DIR))

ALPACA = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Which planet is largest?", "input": "", "output": "Jupiter."},
    {"instruction": "How many legs has a spider?", "input": "", "output": "Eight legs."},
    {"instruction": "At what temperature does water boil?", "input": "", "output": "100 degrees."},
    {"instruction": "What is two plus two?", "input": "", "output": "Four."},
    {"instruction": "Name the fox's colour.", "input": "the quick brown fox", "output": "Brown."},
    {"instruction": "What jumps over the lazy dog?", "input": "", "output": "The fox."},
]


needs_data = pytest.mark.skipif(
    not (get_settings().data_dir / "README.md").is_file(), reason="benchmark data dir not present (set FSLM_DATA_DIR)"
)


def tiny_model(folder: Path, seed: int) -> Path:
    """A tiny model whose context window admits the real benchmark prompts (its tokenizer needs many tokens)."""
    build_tiny_model(folder, seed=seed)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 16384
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def smoke_stack(student: Path) -> dict:
    gen = {
        "max_new_tokens": 64,
        "stop": [" ", "e", "a", "o", "i", "s"],
    }  # random tiny-model text hits one fast: a short, finished target
    return {
        "name": "smoke",
        "base_model": str(student),
        "max_prompt_tokens": 100000,
        "stages": [
            {
                "name": "intent",
                "instruction": "Restate.",
                "sees": ["prompt"],
                "generation": gen,
                "teacher_prompt": "Request: {prompt}\nResponse: {answer}\nRestate the request.",
            },
            {
                "name": "facts",
                "instruction": "Facts.",
                "sees": ["prompt"],
                "generation": gen,
                "teacher_prompt": "Question: {prompt}\nAnswer: {answer}\nList the facts.",
            },
            {
                "name": "reasoning",
                "instruction": "Reason.",
                "sees": ["prompt", "intent", "facts"],
                "generation": gen,
                "teacher_prompt": "Question: {prompt}\nFacts: {facts}\nAnswer: {answer}\nExplain.",
            },
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "facts", "reasoning"],
                "generation": {"max_new_tokens": 48, "stop": ["\n\n"]},
            },
        ],
    }


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("repro")
    models = {
        name: tiny_model(root / name, seed)
        for name, seed in (("student", 0), ("teacher_a", 1), ("teacher_b", 2), ("big", 3))
    }
    stack = root / "stack.yaml"
    stack.write_text(yaml.safe_dump(smoke_stack(models["student"])))
    data = root / "alpaca.json"
    data.write_text(json.dumps(ALPACA))
    return {"root": root, "models": models, "stack": stack, "data": data}
