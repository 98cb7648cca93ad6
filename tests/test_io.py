"""fslm.io: the bounded, strict readers every loader shares, and the atomic writers of fslm's own files."""

from __future__ import annotations

import json
import os
import time
import tracemalloc

import pytest
import yaml
from fuzzing import FUZZ, json_values
from hypothesis import given
from hypothesis import strategies as st

import fslm.io.writing
from fslm.errors import ConfigError, DataError
from fslm.io import (
    MAX_JSON_DEPTH,
    JsonError,
    append_jsonl,
    atomic_file,
    decode_text,
    iter_jsonl,
    lines,
    load_yaml,
    loads_json,
    printable,
    read_bytes,
    read_jsonl,
    read_text,
    replace_surrogates,
    value_problem,
    write_atomic,
    write_json,
    write_jsonl,
)

BOMB = "\n".join(
    ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
)


def test_decode_names_line_and_column_of_the_bad_byte(tmp_path):
    path = tmp_path / "x.txt"
    with pytest.raises(DataError, match=r"x\.txt: line 3, column 4: not UTF-8 text \(byte 0xff"):
        decode_text(path, b"a\nb\ncaf\xff\n")
    assert decode_text(path, b"\xef\xbb\xbfname") == "name"  # a BOM is dropped


def test_read_bytes_refuses_fifos_directories_and_oversized_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_bytes(fifo)  # would block forever waiting for a writer if opened blocking
    with pytest.raises(DataError, match="not a regular file|cannot read"):
        read_bytes(tmp_path)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2049)
    with pytest.raises(ConfigError, match="larger than 2049|larger than 2048 bytes"):
        read_text(big, limit=2048, error=ConfigError)
    assert read_bytes(big, limit=2049) == b"x" * 2049
    with pytest.raises(DataError, match="cannot read"):
        read_bytes(tmp_path / "missing")


def test_lines_split_on_newline_only():
    text = json.dumps({"a": "x\u2028y\x85z\x0c"}, ensure_ascii=False) + "\r\n\n  \n[1]"
    assert list(lines(text)) == [(1, json.dumps({"a": "x\u2028y\x85z\x0c"}, ensure_ascii=False)), (4, "[1]")]


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"a": "\\ud800"}', "field 'a' holds a lone surrogate"),
        ('{"a": [1, {"b": "x\\udfffy"}]}', "field 'a[1].b' holds a lone surrogate"),
        ('{"\\udc00": 1}', "the name of field"),
        ("[" * 5000 + "]" * 5000, "nested more than"),
        ("[" * (MAX_JSON_DEPTH + 2) + "]" * (MAX_JSON_DEPTH + 2), "nested more than"),
        ("9" * 5000, "unreadable number"),
        ('{"a": 1,}', "at column 9"),
        ('{\n"a": }', "at line 2, column 6"),
    ],
)
def test_loads_json_refuses_with_a_reason(text, problem):
    with pytest.raises(JsonError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        loads_json(text)


def test_loads_json_keeps_surrogate_pairs_and_escaped_backslashes():
    assert loads_json('"\\ud83d\\ude00"') == "\U0001f600"
    assert loads_json('"\\\\ud800"') == "\\ud800"  # an escaped backslash, not a surrogate


@FUZZ
@given(json_values)
def test_loads_json_round_trips_or_names_the_surrogate(value):
    text = json.dumps(value)  # ensure_ascii: a lone surrogate becomes a \\udXXX escape
    problem = value_problem(value)
    if problem is None:
        assert json.dumps(loads_json(text)) == text
    else:
        with pytest.raises(JsonError, match="lone surrogate"):
            loads_json(text)


@FUZZ
@given(st.text(st.characters(exclude_categories=())) | st.binary().map(lambda b: b.decode("latin-1")))
def test_loads_json_raises_only_json_error(text):
    try:
        loads_json(text)
    except JsonError as err:
        str(err).encode("utf-8")


def test_printable_and_replace_surrogates():
    assert printable("a\ud800b") == "a\\ud800b"
    assert replace_surrogates("a\udfffb") == "a\ufffdb"
    assert replace_surrogates("ok \U0001f600") == "ok \U0001f600"


def test_yaml_alias_bomb_is_refused_at_once_in_bounded_memory():
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=r"bomb.yaml: line 6, column 4: .*expands to more than 100,000 values"):
            load_yaml(BOMB, "bomb.yaml", error=ConfigError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20 and time.monotonic() - started < 5


@pytest.mark.parametrize(
    "text, problem",
    [
        ("a: &x [1, *x]\n", r"line 1, column 11: .*alias \*x is inside the value it names"),
        ("a: *x\n", "found undefined alias 'x'"),
        ("s: &s " + "x" * 200_000 + "\nt: [" + ", ".join(["*s"] * 40) + "]\n", "expands to more than"),
        ("[" * 200 + "]" * 200, "nested more than 32 levels"),
        ("a: &a " + "[" * 20 + "1" + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20, "32 levels deep through"),
        ("d: 2001-02-30\n", r"line 1, column 4: .*cannot read this value \(day is out of range"),
        ("n: " + "1" * 5000 + "\n", "cannot read this value"),
        ("a: !!python/object:os.system {}\n", "could not determine a constructor"),
        ('a: "\\ud800"\n', "field 'a' holds a lone surrogate"),
        ("a: \x07\n", "special characters are not allowed"),
        ("a: [1, 2\n", "line 2, column 1"),
    ],
)
def test_yaml_refusals_name_the_problem(text, problem):
    with pytest.raises(ConfigError, match=problem):
        load_yaml(text, "s.yaml", error=ConfigError)


def test_yaml_aliases_that_safe_dump_writes_still_load():
    shared = ["prompt"]
    text = yaml.safe_dump({"stages": [{"name": "a", "sees": shared}, {"name": "b", "sees": shared}]})
    assert "&id001" in text and "*id001" in text  # PyYAML's own output for an object seen twice
    assert load_yaml(text, "s.yaml", error=ConfigError)["stages"][1]["sees"] == ["prompt"]
    merged = load_yaml("base: &b {k: 1}\nother:\n  <<: *b\n  j: 2\n", "s.yaml", error=ConfigError)
    assert merged["other"] == {"k": 1, "j": 2}


@FUZZ
@given(st.text(st.characters(exclude_categories=()), max_size=200))
def test_load_yaml_raises_only_the_given_error(text):
    try:
        load_yaml(text, "s.yaml", error=ConfigError)
    except ConfigError as err:
        assert str(err).startswith("s.yaml:")
        str(err).encode("utf-8")


# ---- JSONL reading --------------------------------------------------------------------------------------------------


def test_iter_jsonl_numbers_the_lines_and_keeps_u2028_inside_strings(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n' + json.dumps({"b": "x\u2028y"}, ensure_ascii=False) + "\r\n[2]", "utf-8")
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"b": "x\u2028y"}), (5, [2])]
    assert read_jsonl(path) == [{"a": 1}, {"b": "x\u2028y"}, [2]]


def test_a_bad_jsonl_line_is_one_error_naming_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": }\n{"a": 4}\n', "utf-8")
    with pytest.raises(DataError, match=r"rows\.jsonl:3: not valid JSON \(Expecting value at column 7\)"):
        read_jsonl(path)
    wording = "{path}: line {line}: corrupt record ({problem}); fix or delete that line"
    with pytest.raises(ConfigError, match=r"rows\.jsonl: line 3: corrupt record \(Expecting .*\); fix or delete"):
        read_jsonl(path, bad_line=wording, error=ConfigError)
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl: line 2, column 11: not UTF-8 text"):
        read_jsonl(path)
    path.write_text('{"a": "\\ud800"}\n', "utf-8")
    with pytest.raises(DataError, match=r"rows\.jsonl:1: not valid JSON \(field 'a' holds a lone surrogate"):
        read_jsonl(path)


def test_iter_jsonl_parses_text_already_read(tmp_path):
    path = tmp_path / "never-read.jsonl"  # does not exist: the caller's text is all that is parsed
    assert read_jsonl(path, text='{"id": "a"}\n{"id": "b"}\n') == [{"id": "a"}, {"id": "b"}]
    with pytest.raises(DataError, match=r"never-read\.jsonl:2: not valid JSON"):
        read_jsonl(path, text='{"id": "a"}\n{"id"\n')


# ---- atomic writing -------------------------------------------------------------------------------------------------


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_atomic_writes_text_and_bytes_and_creates_the_folder(tmp_path):
    target = tmp_path / "new" / "out.txt"
    assert write_atomic(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()
    write_atomic(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff" and _leftovers(target.parent) == []


def test_write_json_keeps_non_ascii_and_ends_with_a_newline(tmp_path):
    target = write_json(tmp_path / "x.json", {"b": "ü", "a": [1]}, sort_keys=True)
    assert target.read_text("utf-8") == '{\n  "a": [\n    1\n  ],\n  "b": "ü"\n}\n'
    write_json(target, {"k": 1}, indent=None)
    assert target.read_text("utf-8") == '{"k": 1}\n'


def test_an_error_mid_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    target = tmp_path / "rows.jsonl"
    target.write_text("old\n")
    rows = [{"id": 1}, {"id": 2}, {"id": object()}]  # the third row cannot be serialized: the write stops halfway
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_jsonl(target, rows)
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="killed"), atomic_file(tmp_path / "fresh.bin") as fh:
        fh.write(b"half of it")
        raise RuntimeError("killed")
    assert not (tmp_path / "fresh.bin").exists() and _leftovers(tmp_path) == []
    assert write_jsonl(target, iter(rows[:2])) == 2
    assert read_jsonl(target) == [{"id": 1}, {"id": 2}]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fslm.io.writing.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "x.txt", "data")
    assert list(tmp_path.iterdir()) == []


def test_append_jsonl_appends_whole_batches_or_nothing(tmp_path):
    target = tmp_path / "store.jsonl"
    assert append_jsonl(target, [{"id": "a"}]) == 1
    assert append_jsonl(target, []) == 0
    with open(target, "a+b") as fh:  # a handle a store holds open (and locked)
        assert append_jsonl(fh, ({"id": i} for i in "bc")) == 2
    with pytest.raises(TypeError):
        append_jsonl(target, [{"id": "d"}, {"id": object()}])  # encoded first: "d" is not written either
    assert read_jsonl(target) == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
