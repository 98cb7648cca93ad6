"""Fixtures for evaluation tests: a tiny model system and a tiny data dir with a few real-format records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fslm.settings import get_settings, reset_settings

REAL_DATA = get_settings().data_dir
needs_data = pytest.mark.skipif(
    not (REAL_DATA / "README.md").is_file(), reason=f"benchmark data dir {REAL_DATA} not present (set FSLM_DATA_DIR)"
)

ARC_EASY = [
    {
        "query": "Question: Which gas do plants take in?",
        "choices": ["oxygen", "carbon dioxide", "helium", "neon"],
        "gold": 1,
    },
    {"query": "Question: What has eight legs?", "choices": ["a spider", "a dog", "a bird", "a fish"], "gold": 0},
    {
        "query": "Question: Water boils at what temperature?",
        "choices": ["10 degrees", "50 degrees", "100 degrees", "0 degrees"],
        "gold": 2,
    },
]
GSM8K = [
    {"question": "Tom has 2 apples and buys 2 more. How many apples?", "answer": "2 + 2 = 4\n#### 4"},
    {"question": "A box holds 1,000 pens. Two boxes hold?", "answer": "2 * 1000 = 2000\n#### 2,000"},
]


@pytest.fixture()
def model_system(tiny_engine):
    from fslm.evaluate import ModelSystem

    return ModelSystem(tiny_engine, name="model:tiny")


@pytest.fixture()
def tiny_data(tmp_path, monkeypatch) -> Path:
    """FSLM_DATA_DIR -> a folder with 3 ARC-Easy and 2 GSM8K records (their real layouts)."""
    root = tmp_path / "data"
    (root / "arc_easy").mkdir(parents=True)
    (root / "gsm8k").mkdir()
    (root / "arc_easy" / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC_EASY))
    (root / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    monkeypatch.setenv("FSLM_DATA_DIR", str(root))
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    reset_settings()
    yield root
    reset_settings()
