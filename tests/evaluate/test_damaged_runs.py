"""A damaged run folder (truncated or garbled items.jsonl, run.json or summary.json) is one DataError naming the file
and the line, for `fslm eval compare` and for resuming a run; the torn tail of a killed run is still tolerated."""

from __future__ import annotations

import json

import pytest

from fslm.errors import DataError
from fslm.evaluate.compare import read_run
from fslm.evaluate.store import RunStore, read_rows

ROWS = [{"task": "boolq", "id": str(i), "acc": float(i % 2)} for i in range(3)]


def _items(rows=ROWS) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _run(tmp_path, items: str, summary: str | None = None):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "items.jsonl").write_text(items, encoding="utf-8")
    if summary is not None:
        (folder / "summary.json").write_text(summary, encoding="utf-8")
    return folder


def test_compare_reads_a_good_run(tmp_path):
    info, values = read_run(_run(tmp_path, _items(), json.dumps({"system": "model:x", "kind": "model"})))
    assert info == {"system": "model:x", "kind": "model"} and values[("boolq", "1")] == 1.0


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (_items(ROWS[:1]) + '{"task": "boolq", "id": "1", "ac\n' + _items(ROWS[2:]), r"items.jsonl:2: .*Unterminated"),
        (_items() + '{"task": "boolq", "id": "9", "acc": }\n', r"items.jsonl:4: malformed row \(Expecting value"),
        (_items() + '["boolq", "9", 1]\n', r"items.jsonl:4: malformed row; expected a JSON object with 'task'"),
        (_items() + '{"task": "boolq", "id": "9"}\n', r"items.jsonl:4: malformed row; expected .* 'acc'"),
        ('{"task": "b\\ud800", "id": "1", "acc": 1}\n', r"items.jsonl:1: .*lone surrogate"),
    ],
)
def test_compare_names_the_bad_line(tmp_path, items, match):
    with pytest.raises(DataError, match=match):
        read_run(_run(tmp_path, items))


def test_compare_names_a_line_that_is_not_utf8(tmp_path):
    folder = _run(tmp_path, _items())
    (folder / "items.jsonl").write_bytes(_items().encode() + b'{"task": "\xff"}\n')
    with pytest.raises(DataError, match=r"items.jsonl: line 4, column 11: not UTF-8"):
        read_run(folder)


@pytest.mark.parametrize("summary", ['{"system": "model:x", "kind": ', "[1, 2]", "\x00garbage"])
def test_compare_refuses_a_damaged_summary(tmp_path, summary):
    with pytest.raises(DataError, match=r"summary.json: (not valid JSON|expected a JSON object)"):
        read_run(_run(tmp_path, _items(), summary))


def test_resume_refuses_a_damaged_run_json(tmp_path):
    folder = tmp_path / "run"
    with RunStore(folder, {"system": "a"}) as store:
        store.append([{"id": "x/1"}])
    run_json = folder / "run.json"
    text = run_json.read_text()
    run_json.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"run.json: not valid JSON \(.* at line \d+, column \d+\)"):
        RunStore(folder, {"system": "a"})
    run_json.write_text(json.dumps({"identity": ["system", "a"], "sessions": []}))
    with pytest.raises(DataError, match=r"run.json: malformed identity or sessions"):
        RunStore(folder, {"system": "a"})


def test_resume_names_a_bad_middle_line_and_drops_a_torn_tail(tmp_path):
    folder = tmp_path / "run"
    with RunStore(folder, {"system": "a"}) as store:
        store.append([{"id": "x/1"}, {"id": "x/2"}])
    items = folder / "items.jsonl"
    good = items.read_bytes()
    items.write_bytes(good + '{"id": "x/3", "text": "caf\u00e9'.encode()[:-1])  # torn inside a UTF-8 character
    with RunStore(folder, {"system": "a"}) as store:
        assert store.done() == {"x/1", "x/2"}
    assert items.read_bytes() == good  # the torn tail is cut off, the rest kept
    items.write_bytes(b'{"id": "x/1"}\n{"id": "\xff"}\n{"id": "x/2"}\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed row \(not UTF-8 text at byte 9\)"):
        RunStore(folder, {"system": "a"})
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed row \(not UTF-8"):
        read_rows(folder)
    items.write_bytes(b'{"id": "x/1"}\n["x/2"]\n{"id": "x/3"}\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed row \(expected a JSON object with an 'id'\)"):
        read_rows(folder)
