"""Alpaca instruction data and distilled JSONL under fuzzing: load correctly or one DataError naming the file."""

from __future__ import annotations

import json
import re
import time

import pytest
from fuzzing import FUZZ, NASTY, dumps_line, json_ish, json_values, loads_or_fails_cleanly, mutated, texts
from hypothesis import given
from hypothesis import strategies as st

from fslm.distill.store import DistillStore, read_distilled
from fslm.errors import DataError
from fslm.tasks.instructions import NO_INPUT, load_instructions

from .conftest import ALPACA

GOOD_LIST = json.dumps(ALPACA[:4], indent=1).encode()
GOOD_JSONL = b"".join(dumps_line(r) for r in ALPACA[:4])
RECORD = {"id": "a1", "prompt": "p", "targets": {"answer": "x"}, "kept": True, "teacher": "t"}
GOOD_DISTILLED = b"".join(dumps_line(RECORD | {"id": f"a{i}"}) for i in range(3))

records = st.fixed_dictionaries(  # mostly valid, so that a whole file of them often loads and its text is checked
    {"instruction": texts},
    optional={
        "input": texts | st.sampled_from(["<noinput>", "No input."]),
        "output": texts,
        "id": texts | st.integers(),
        "extra": json_values,
    },
)


def _instructions(tmp_path, content: bytes, name: str = "data.json"):
    path = tmp_path / name
    path.write_bytes(content)
    return loads_or_fails_cleanly(lambda: load_instructions(path), path, DataError)


@FUZZ
@given(st.binary(max_size=300) | st.sampled_from(NASTY) | json_ish | mutated(GOOD_LIST) | mutated(GOOD_JSONL))
def test_alpaca_bytes(tmp_path, content):
    _instructions(tmp_path, content)


@FUZZ
@given(st.lists(records, min_size=1, max_size=4) | st.lists(json_values | records, max_size=4), st.booleans())
def test_alpaca_records_of_any_shape(tmp_path, rows, as_list):
    content = json.dumps(rows).encode() if as_list else b"".join(dumps_line(r) for r in rows)
    loaded = _instructions(tmp_path, content)
    if loaded is not None:  # what loads is usable text: it encodes, so tokenizers and writers take it
        for rec in loaded[0]:
            (rec.prompt + (rec.gold or "") + rec.id).encode("utf-8")


def test_alpaca_lines_may_hold_unicode_line_separators(tmp_path):
    rows = [{"instruction": "a\u2028b\x85c", "output": "d\u2029e"}, {"instruction": "f", "output": "g"}]
    loaded, _ = _instructions(tmp_path, b"".join(dumps_line(r) for r in rows), "x.jsonl")
    assert [r.instruction for r in loaded] == ["a\u2028b\x85c", "f"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"instruction": "\\ud800"}\n', "line 1: malformed JSON: field 'instruction' holds a lone surrogate"),
        (b'[{"instruction": "a"},\n {"instruction": "b", "input": "\\udfff"}]', "record 2 (line 2)"),
        (b"[" * 3000 + b"]" * 3000, "nested more than"),
        (b'{"instruction": "a", "id": ' + b"9" * 5000 + b"}\n", "unreadable number"),
        (b'{"instruction": "a", "id": true}\n', "field 'id' must be a string or integer, got bool"),
    ],
)
def test_alpaca_refusals(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(expected)) as err:
        load_instructions(path)
    assert str(path) in str(err.value)


OLD_NO_INPUT = re.compile(r"^<?\s*no\s*-?\s*input\s*>?\.?$", re.IGNORECASE)


@FUZZ
@given(st.text(st.sampled_from(" \t-<>.noinputNOINPUTx"), max_size=14))
def test_no_input_pattern_matches_what_the_old_one_did(text):
    assert bool(NO_INPUT.match(text)) == bool(OLD_NO_INPUT.match(text))


def test_no_input_pattern_is_linear():
    started = time.monotonic()
    NO_INPUT.match("no" + " " * 1_000_000 + "x")  # the old pattern: ~6 s at 40k spaces, quadratic
    assert time.monotonic() - started < 2


# ---- distilled JSONL ---------------------------------------------------------------------------------------------


def _distilled(tmp_path, content: bytes) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    loaded = loads_or_fails_cleanly(lambda: read_distilled(path), path, DataError)
    for record in loaded or []:  # what loads can be written again, as fine-tuning and --reuse do
        json.dumps(record, ensure_ascii=False).encode("utf-8")


@FUZZ
@given(st.binary(max_size=300) | st.sampled_from(NASTY) | json_ish.map(lambda b: b + b"\n") | mutated(GOOD_DISTILLED))
def test_read_distilled_bytes(tmp_path, content):
    _distilled(tmp_path, content)


@FUZZ
@given(st.lists(json_values | st.builds(lambda v: RECORD | {"targets": v}, json_values), max_size=4))
def test_read_distilled_records_of_any_shape(tmp_path, rows):
    _distilled(tmp_path, b"".join(dumps_line(r) for r in rows))


@FUZZ
@given(mutated(GOOD_DISTILLED) | st.binary(max_size=200) | json_ish)
def test_store_opens_or_refuses_and_never_cuts_a_foreign_file(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    store = loads_or_fails_cleanly(lambda: DistillStore(path).__enter__(), path, DataError)
    if store is None:
        assert path.read_bytes() == content  # refused: untouched
        return
    store.__exit__()
    kept = path.read_bytes()
    assert content.startswith(kept) and content[len(kept) :].strip()[:1] in (b"", b"{")  # only a torn record is cut


def test_store_refuses_a_file_that_is_not_distilled_records(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00binary weights without a newline")
    with pytest.raises(DataError, match="line 1: not a distilled record"):
        DistillStore(path).__enter__()
    assert path.read_bytes() == b"\x08\x00\x00\x00binary weights without a newline"


def test_store_identity_sidecar_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD_DISTILLED)
    (tmp_path / "d.jsonl.identity.json").write_bytes(b"[1]")
    with pytest.raises(DataError, match="identity.json: expected a JSON object"):
        DistillStore(path, identity={"a": 1}).__enter__()
    (tmp_path / "d.jsonl.identity.json").write_bytes(b"\xff")
    with pytest.raises(DataError, match="identity.json: line 1, column 1: not UTF-8"):
        DistillStore(path, identity={"a": 1}).__enter__()


def test_store_out_that_is_a_directory(tmp_path):
    with pytest.raises(DataError, match="cannot write the distilled file here"):
        DistillStore(tmp_path).__enter__()
