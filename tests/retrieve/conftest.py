"""Retrieval fixtures: a small passage file and its BM25 index (built once per session; bm25s is fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PASSAGES = [
    {"id": "sun", "text": "The sun gives plants the light they need to grow.", "source": "t:1"},
    {"id": "boil", "text": "Water boils at 100 degrees Celsius at sea level.", "source": "t:2"},
    {"id": "mice", "text": "Cats chase mice at night.", "source": "t:3"},
    {"id": "magnet", "text": "A magnet attracts iron nails but not copper coins.", "source": "t:4"},
    {"id": "moon", "text": "The moon orbits the Earth about once a month.", "source": "t:5"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def passage_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("passages") / "passages.jsonl", PASSAGES)


@pytest.fixture(scope="session")
def index_dir(passage_file, tmp_path_factory) -> Path:
    from fslm.retrieve import index_passages

    out = tmp_path_factory.mktemp("index") / "index"
    index_passages(passage_file, out)
    return out
