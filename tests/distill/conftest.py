"""Distill fixtures: a 3-stage stack with teacher prompts on the tiny model, Alpaca files, a fault-injecting teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ALPACA = [
    {"instruction": f"What is {n} plus {n}?", "input": "", "output": f"The sum of {n} and {n} is {2 * n}."}
    for n in range(1, 13)
] + [
    {"instruction": "Classify the tone of this sentence.", "input": "She always finds a way.", "output": "Positive"},
    {"instruction": "Name a planet.", "input": "<noinput>", "output": "Jupiter is the largest planet."},
    {"instruction": "Write a haiku about water.", "input": "", "output": ""},  # no gold: unhinted
]


def tiny_stack(model_dir: Path) -> dict:
    return {
        "name": "tiny",
        "base_model": str(model_dir),
        "max_prompt_tokens": 256,
        "stages": [
            {
                "name": "intent",
                "instruction": "Restate.",
                "sees": ["prompt"],
                "generation": {"max_new_tokens": 8},
                "teacher_prompt": "Request: {prompt}\nResponse: {answer}\nRestate the request.",
            },
            {
                "name": "facts",
                "instruction": "Facts.",
                "sees": ["prompt", "intent"],
                "generation": {"max_new_tokens": 8},
                "teacher_prompt": "Question: {prompt}\nIntent: {intent}\nAnswer: {answer}\nList the facts.",
            },
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "facts"],
                "generation": {"max_new_tokens": 48},
            },
        ],
    }


@pytest.fixture()
def stack_file(tiny_model_dir, tmp_path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(tiny_stack(tiny_model_dir)))
    return path


def write_alpaca(path: Path, records: list, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


@pytest.fixture()
def alpaca_file(tmp_path) -> Path:
    return write_alpaca(tmp_path / "alpaca.json", ALPACA)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
