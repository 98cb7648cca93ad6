"""Tiny model pairs and hand-made `fslm eval` runs for the collaboration tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_model  # tests/conftest.py (tests/ is on sys.path under pytest)


@pytest.fixture(scope="session")
def tiny_draft_dir(tmp_path_factory) -> Path:
    """Same tokenizer as `tiny_model_dir` (same BPE training), different weights."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-draft"), seed=1)


@pytest.fixture(scope="session")
def tiny_other_tok_dir(tmp_path_factory) -> Path:
    """A different vocabulary: the universal (cross-tokenizer) path."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-other-tok"), seed=2, vocab_size=300)


@pytest.fixture(scope="session")
def draft_engine(tiny_draft_dir):
    from fslm.engine import load_engine

    return load_engine(str(tiny_draft_dir))


@pytest.fixture(scope="session")
def other_tok_engine(tiny_other_tok_dir):
    from fslm.engine import load_engine

    return load_engine(str(tiny_other_tok_dir))


def write_run(folder: Path, rows: list[dict], summary: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def make_rows(
    outcomes: list[tuple[bool, list[float]]], *, task: str = "arc_easy", tokens: int = 10, prefix: str = "q"
) -> list[dict]:
    """fslm-eval-style rows: (correct, choice_scores) per item."""
    rows = []
    for i, (correct, scores) in enumerate(outcomes):
        pred = max(range(len(scores)), key=scores.__getitem__)
        rows.append(
            {
                "id": f"{task}/test/{i}",
                "task": task,
                "prompt": f"Question: {prefix} number {i}?\nAnswer:",
                "stages": [],
                "choice_scores": scores,
                "prediction": pred,
                "gold": pred if correct else (pred + 1) % len(scores),
                "correct": correct,
                "tokens_in": tokens,
                "tokens_out": 0,
                "seconds": 0.01,
            }
        )
    return rows


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """Tiny models on a shared, busy CPU run ~10x faster on one thread (no thread hand-off waits); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
