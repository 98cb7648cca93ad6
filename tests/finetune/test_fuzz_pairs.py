"""Fine-tuning inputs under fuzzing: pairs files, distilled records turned into examples, and damaged checkpoints
each load or fail with one DataError naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
from fuzzing import FUZZ, NASTY, broken, dumps_line, json_ish, loads_or_fails_cleanly, mutated
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from fslm.config import parse_stack_config
from fslm.distill.store import read_distilled
from fslm.errors import DataError
from fslm.finetune import read_pairs
from fslm.finetune.checkpoint import load_checkpoint, load_done
from fslm.finetune.examples import build_examples, usable_records
from fslm.io import write_json

from .conftest import distilled_records, tiny_stack

PAIR = {"id": "p1", "context": "Digit 1 in words:", "continuation": " one"}
GOOD_PAIRS = dumps_line(PAIR) + dumps_line(PAIR | {"id": "p2"})


def _pairs(tmp_path, content: bytes):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    rows = loads_or_fails_cleanly(lambda: read_pairs(path), path, DataError)
    for row in rows or []:
        (row["id"] + row["context"] + row["continuation"]).encode("utf-8")
    return rows


@FUZZ
@given(st.binary(max_size=200) | st.sampled_from(NASTY) | json_ish | mutated(GOOD_PAIRS))
def test_pairs_bytes(tmp_path, content):
    _pairs(tmp_path, content)


@FUZZ
@given(st.lists(broken(PAIR) | st.just(PAIR), min_size=1, max_size=3))
def test_pairs_one_mistake_away(tmp_path, rows):
    _pairs(tmp_path, b"".join(dumps_line(r) for r in rows))


def test_pairs_may_hold_unicode_line_separators(tmp_path):
    rows = _pairs(tmp_path, dumps_line(PAIR | {"context": "a\u2028b\x85c\x0cd"}))
    assert rows[0]["context"] == "a\u2028b\x85c\x0cd" and rows[0]["_line"] == 1


@pytest.fixture(scope="module")
def examples_engine(tiny_model_dir):
    """Only tokenizes and renders chat text here (no training), so one engine serves every example."""
    from fslm.engine import load_engine

    return load_engine(str(tiny_model_dir))


@FUZZ
@given(data=st.data())
def test_distilled_records_to_examples(tmp_path, tiny_model_dir, examples_engine, data):
    """A distilled file one mistake away from good: usable records become token examples, others are a DataError."""
    cfg = parse_stack_config(tiny_stack(tiny_model_dir))
    good = distilled_records(2)
    rows = data.draw(st.lists(st.sampled_from(good) | broken(good[0]), min_size=1, max_size=3))
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(dumps_line(r) for r in rows))

    def examples():
        return build_examples(cfg, examples_engine, usable_records(cfg, read_distilled(path), str(path)), 256)

    loads_or_fails_cleanly(examples, path, DataError)


@pytest.fixture()
def checkpoint_root(tmp_path):
    import torch

    root = tmp_path / "ckpt"
    folder = root / "step-0000001"
    folder.mkdir(parents=True)
    save_file({"a": torch.zeros(2)}, folder / "adapter.safetensors")
    write_json(folder / "state.json", {"log": [], "param_groups": [], "fingerprint": {}})
    write_json(root / "latest.json", {"step": 1, "folder": folder.name})
    write_json(root / "done.json", {"fingerprint": {}, "log_entry": {"summary": {}}})
    return root


CHECKPOINT_FILES = ["latest.json", "step-0000001/state.json", "step-0000001/adapter.safetensors", "done.json"]


@FUZZ
@given(st.sampled_from(CHECKPOINT_FILES), st.binary(max_size=80) | json_ish | st.sampled_from([b"[]", b"{}", b"1"]))
def test_damaged_checkpoint_files(checkpoint_root, tmp_path, name, content):
    root = tmp_path / "damaged"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(checkpoint_root, root)
    (root / name).write_bytes(content)
    loads_or_fails_cleanly(lambda: load_checkpoint(root), root, DataError)
    loads_or_fails_cleanly(lambda: load_done(root), root, DataError)


def test_checkpoint_pointer_cannot_leave_its_folder(checkpoint_root):
    (checkpoint_root / "latest.json").write_text(json.dumps({"step": 1, "folder": "../../step-0000001"}))
    assert load_checkpoint(checkpoint_root).folder == checkpoint_root / "step-0000001"
