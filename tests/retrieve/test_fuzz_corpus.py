"""Retrieval corpus inputs under fuzzing: an Alpaca file fed to `build_corpus` gives passages or one DataError naming
it, and what it gives can be written as a passage file."""

from __future__ import annotations

import json

from fuzzing import FUZZ, NASTY, broken, dumps_line, json_ish, loads_or_fails_cleanly, mutated
from hypothesis import given
from hypothesis import strategies as st

from fslm.errors import DataError
from fslm.retrieve.corpus import ALPACA, Reserved, build_corpus
from fslm.retrieve.index import read_passages, write_passages

RECORD = {"instruction": "Name a planet.", "input": "", "output": "Jupiter."}
GOOD = dumps_line(RECORD) + dumps_line(RECORD | {"instruction": "Name a star."})


def _corpus(tmp_path, content: bytes) -> None:
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(content)
    built = loads_or_fails_cleanly(
        lambda: build_corpus([ALPACA], alpaca_path=path, reserved=Reserved()), path, DataError
    )
    if built is not None and built[0]:
        passages, _ = built
        out = tmp_path / "passages.jsonl"
        write_passages(passages, out)  # a temp file renamed: a lone surrogate here would leave a half-written file
        assert [p.text for p in read_passages(out)] == [p.text for p in passages]


@FUZZ
@given(st.binary(max_size=200) | st.sampled_from(NASTY) | json_ish | mutated(GOOD))
def test_alpaca_bytes_to_corpus(tmp_path, content):
    _corpus(tmp_path, content)


@FUZZ
@given(st.lists(broken(RECORD) | st.just(RECORD), min_size=1, max_size=3))
def test_alpaca_records_one_mistake_away_to_corpus(tmp_path, rows):
    _corpus(tmp_path, b"".join(dumps_line(r) for r in rows))


PASSAGE = {"id": "p1", "text": "Jupiter is the largest planet.", "source": "alpaca:1"}


@FUZZ
@given(
    st.binary(max_size=200)
    | st.sampled_from(NASTY)
    | json_ish
    | mutated(dumps_line(PASSAGE))
    | st.lists(broken(PASSAGE), min_size=1, max_size=2).map(lambda rows: b"".join(dumps_line(r) for r in rows))
)
def test_passage_files(tmp_path, content):
    path = tmp_path / "passages.jsonl"
    path.write_bytes(content)
    passages = loads_or_fails_cleanly(lambda: read_passages(path), path, DataError)
    for p in passages or []:
        json.dumps([p.id, p.text, p.source], ensure_ascii=False).encode("utf-8")
