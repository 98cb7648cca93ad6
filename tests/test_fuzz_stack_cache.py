"""The stage cache's JSONL text copy under fuzzing: import adds entries or raises one DataError naming the file and
line; export never cuts a file that is not an export."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from fuzzing import FUZZ, NASTY, broken, dumps_line, json_ish, loads_or_fails_cleanly, mutated
from hypothesis import given
from hypothesis import strategies as st

from fslm.engine import Generation
from fslm.errors import DataError
from fslm.stack_cache import StageCache

ENTRY = {"key": "k1", "value": asdict(Generation("It is four.", 12, 4, 0.25, "stop"))}
GOOD = dumps_line(ENTRY) + dumps_line(ENTRY | {"key": "k2"})


@pytest.fixture()
def cache(tmp_path):
    with StageCache(tmp_path / "c.sqlite") as cache:
        yield cache


def _import(tmp_path, cache, content: bytes) -> None:
    path = tmp_path / "copy.jsonl"
    path.write_bytes(content)
    added = loads_or_fails_cleanly(lambda: cache.import_jsonl(path), path, DataError)
    if added:  # what was imported reads back as generations with usable costs
        found = cache.get_many([f"k{i}" for i in range(1, 4)] + ["k1"])
        for g in found.values():
            assert g.tokens_in >= 0 and g.seconds >= 0
            g.text.encode("utf-8")


@FUZZ
@given(st.binary(max_size=200) | st.sampled_from(NASTY) | json_ish.map(lambda b: b + b"\n") | mutated(GOOD))
def test_import_bytes(tmp_path, cache, content):
    _import(tmp_path, cache, content)


@FUZZ
@given(st.lists(broken(ENTRY) | st.just(ENTRY), min_size=1, max_size=3))
def test_import_entries_one_mistake_away(tmp_path, cache, rows):
    _import(tmp_path, cache, b"".join(dumps_line(r) for r in rows))


def test_export_then_import_keeps_unicode_line_separators(tmp_path, cache):
    weird = Generation("line\u2028separator\x85next\x0cpage", 3, 3, 0.1, "length")
    cache.put_many({"k": weird})
    cache.export_jsonl(tmp_path / "copy.jsonl")
    with StageCache(tmp_path / "other.sqlite") as other:
        assert other.import_jsonl(tmp_path / "copy.jsonl") == 1  # was 0: the line was taken for a torn one
        assert other.get_many(["k"])["k"] == weird


@FUZZ
@given(mutated(GOOD) | st.binary(max_size=100))
def test_export_never_cuts_a_foreign_file(tmp_path, cache, content):
    path = tmp_path / "copy.jsonl"
    path.write_bytes(content)
    written = loads_or_fails_cleanly(lambda: cache.export_jsonl(path), path, DataError)
    kept = path.read_bytes()
    if written is None:
        assert kept == content
    else:
        tail = content[content.rfind(b"\n") + 1 :]
        assert kept == content[: len(content) - len(tail)] and tail.strip()[:1] in (b"", b"{")


@FUZZ
@given(st.binary(max_size=60).map(lambda b: b.decode("latin-1")) | broken(ENTRY["value"]).map(json.dumps))
def test_damaged_sqlite_rows_are_one_error(cache, value):
    with cache._db:
        cache._db.execute("INSERT OR REPLACE INTO stage_outputs (key, value) VALUES ('k1', ?)", (value,))
    found = loads_or_fails_cleanly(lambda: cache.get_many(["k1"]), cache.path, DataError)
    if found is not None:
        found["k1"].text.encode("utf-8")


def test_speculative_rows_with_extra_fields_read_back(cache):
    row = ENTRY["value"] | {"drafted": 5, "accepted": 3}  # what put_many stores for a SpecGeneration
    with cache._db:
        cache._db.execute("INSERT INTO stage_outputs (key, value) VALUES ('s', ?)", (json.dumps(row),))
    assert cache.get_many(["s"])["s"] == Generation(**ENTRY["value"])


def test_export_to_a_directory_is_refused(tmp_path, cache):
    with pytest.raises(DataError, match="not a regular file"):
        cache.export_jsonl(tmp_path)
