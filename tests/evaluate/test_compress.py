"""Compressed run folders (`compress_run`, `fslm eval compress`): every reader sees the same rows, a resumed run
appends beside the compressed file, and damaged or oversized gzip files are refused naming the file."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.collaborate.runs import read_run as read_cascade_run
from fslm.errors import DataError
from fslm.evaluate import compare, compress_run
from fslm.evaluate.store import ITEMS, ITEMS_GZ, RunStore, items_bytes, read_rows
from fslm.io import read_bytes


def _rows(system: str, n: int = 12) -> list[dict]:
    return [
        {
            "id": f"arc/{i}",
            "task": "arc",
            "acc": float((i * (3 if system == "a" else 5)) % 4 != 0),
            "correct": (i * (3 if system == "a" else 5)) % 4 != 0,
            "pred": i % 4,
            "gold": 0,
            "choice_scores": [-1.0 - i, -2.0, -3.0, -4.0],
        }
        for i in range(n)
    ]


def _run(tmp_path, system: str, rows: list[dict]):
    folder = tmp_path / system
    with RunStore(folder, {"system": system}) as store:
        store.append(rows[: len(rows) // 2])
        store.append(rows[len(rows) // 2 :])
    (folder / "summary.json").write_text(json.dumps({"system": system}))
    return folder


def test_compressed_run_reads_like_the_plain_one(tmp_path):
    a, b = _run(tmp_path, "a", _rows("a")), _run(tmp_path, "b", _rows("b"))
    plain_bytes = (a / ITEMS).read_bytes()
    before = (read_rows(a), compare(a, b, n_boot=200), read_cascade_run(a).rows)
    packed = compress_run(a)
    assert packed == a / ITEMS_GZ and not (a / ITEMS).exists()
    assert gzip.decompress(packed.read_bytes()) == plain_bytes  # byte for byte: digests of the rows survive
    assert hashlib.sha256(items_bytes(a)[1]).digest() == hashlib.sha256(plain_bytes).digest()
    assert (read_rows(a), compare(a, b, n_boot=200), read_cascade_run(a).rows) == before
    first = packed.read_bytes()
    (a / ITEMS).write_bytes(plain_bytes)  # deterministic: compressing the same rows again gives the same file
    (a / ITEMS_GZ).unlink()
    assert compress_run(a).read_bytes() == first


def test_resumed_compressed_run_appends_beside_it_and_recompresses_everything(tmp_path):
    rows = _rows("a", 8)
    folder = _run(tmp_path, "a", rows[:5])
    compress_run(folder)
    packed = (folder / ITEMS_GZ).read_bytes()
    with RunStore(folder, {"system": "a"}) as store:
        assert store.done() == {r["id"] for r in rows[:5]}  # compressed rows count as done: not evaluated again
        store.append(rows[5:])
    assert (folder / ITEMS_GZ).read_bytes() == packed  # never rewritten by a resume
    assert set(read_rows(folder)) == {r["id"] for r in rows}
    compress_run(folder)
    assert not (folder / ITEMS).exists() and set(read_rows(folder)) == {r["id"] for r in rows}
    assert [json.loads(line)["id"] for line in gzip.decompress((folder / ITEMS_GZ).read_bytes()).splitlines()] == [
        r["id"] for r in rows
    ]


def test_compress_leaves_out_a_torn_tail(tmp_path):
    folder = _run(tmp_path, "a", _rows("a", 4))
    items = folder / ITEMS
    items.write_bytes(items.read_bytes() + b'{"id": "arc/9", "ta')
    compress_run(folder)
    assert sorted(read_rows(folder)) == [f"arc/{i}" for i in range(4)]


def test_damaged_and_oversized_gzip_files_are_refused_naming_them(tmp_path):
    folder = _run(tmp_path, "a", _rows("a", 6))
    packed = compress_run(folder)
    data = packed.read_bytes()
    packed.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"items.jsonl.gz: not a complete gzip file"):
        read_rows(folder)
    with pytest.raises(DataError, match=r"items.jsonl.gz: not a complete gzip file"):
        RunStore(folder, {"system": "a"})
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (1 << 20)))  # 1 KiB on disk, 1 MiB inflated
    assert bomb.stat().st_size < 4096
    with pytest.raises(DataError, match=r"bomb.jsonl.gz: decompresses to more than 65536 bytes"):
        read_bytes(bomb, limit=1 << 16)


def test_cli_compress(tmp_path):
    folder = _run(tmp_path, "a", _rows("a"))
    result = CliRunner().invoke(app, ["eval", "compress", str(folder)])
    assert result.exit_code == 0 and "items.jsonl.gz" in result.output and (folder / ITEMS_GZ).is_file()
    result = CliRunner().invoke(app, ["eval", "compress", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "error:" in result.output and "no items.jsonl here" in result.output
