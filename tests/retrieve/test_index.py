"""BM25 index: build, save, load (no pickle), search, and clear errors for bad passage files or indexes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fslm.errors import DataError, InputError
from fslm.retrieve import Passage, Retriever, read_passages

from .conftest import PASSAGES, write_jsonl


def test_search_finds_the_passage_sharing_the_query_terms_and_stems(index_dir):
    retriever = Retriever.load(index_dir)
    hits = retriever.search(["At what temperature does water boil?", "what do growing plants need"], k=2)
    assert hits[0][0].passage.id == "boil"  # "boil" matches "boils" through the stemmer
    assert hits[1][0].passage.id == "sun"
    for row in hits:
        assert [h.rank for h in row] == list(range(1, len(row) + 1))
        assert all(a.score >= b.score > 0 for a, b in zip(row, row[1:]))


def test_a_query_sharing_no_term_gets_no_hits_and_k_is_capped(index_dir):
    retriever = Retriever.load(index_dir)
    assert retriever.search(["the of and"], k=3) == [[]]
    assert len(retriever.search(["the moon and the sun and water and cats and magnets"], k=50)[0]) == len(PASSAGES)
    with pytest.raises(InputError, match="k must be >= 1"):
        retriever.search(["moon"], k=0)


def test_avoid_drops_the_record_s_own_passage(index_dir):
    retriever = Retriever.load(index_dir)
    plain = retriever.search(["cats chase mice"], k=1)[0]
    avoided = retriever.search(["cats chase mice"], k=1, avoid=["CATS   chase mice"])[0]
    assert plain[0].passage.id == "mice"
    assert all(h.passage.id != "mice" for h in avoided)


def test_overlap_with_drops_passages_that_copy_a_run_of_the_text(index_dir):
    retriever = Retriever.load(index_dir)
    query = "Question: At what temperature does water boil?\nAnswer:"
    assert [h.passage.id for h in retriever.search([query], k=1)[0]] == ["boil"]
    copied = (
        "Q: water BOILS at 100 degrees, Celsius at sea level? A:"  # the passage's 8-word run, case and commas aside
    )
    assert "boil" not in [h.passage.id for h in retriever.search([copied], k=3, overlap_with=[copied])[0]]
    unrelated = "Question: What temperature makes water boil quickly?"  # shares words, not a run of 8
    assert [h.passage.id for h in retriever.search([unrelated], k=1, overlap_with=[unrelated])[0]] == ["boil"]
    with pytest.raises(InputError, match="overlap_with has 2 entries for 1 queries"):
        retriever.search([query], overlap_with=[query, query])


@pytest.mark.parametrize(
    "a,b,n,shared",
    [
        ("one two three four", "x one two three four y", 3, True),
        ("one two three four", "one two x three four", 3, False),
        ("Cats chase mice.", "At night, cats chase mice at the barn", 8, True),  # shorter than n: all of it appears
        ("", "anything", 8, False),
    ],
)
def test_shares_run(a, b, n, shared):
    from fslm.retrieve.index import shares_run

    assert shares_run(a, b, n) is shared and shares_run(b, a, n) is shared


def test_saved_index_reloads_identically_and_uses_no_pickle(index_dir, passage_file):
    fresh = Retriever.build(read_passages(passage_file))
    loaded = Retriever.load(index_dir)
    query = ["magnets attract iron", "moon orbit"]
    assert [[(h.passage.id, round(h.score, 6)) for h in row] for row in fresh.search(query, k=3)] == [
        [(h.passage.id, round(h.score, 6)) for h in row] for row in loaded.search(query, k=3)
    ]
    import numpy as np

    for npy in (index_dir / "bm25").glob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if an array needed pickle
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["passages"] == len(PASSAGES) and manifest["stemmer"] == "english"


def test_edited_passages_or_a_foreign_folder_are_refused(index_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy)
    with (copy / "passages.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "new", "text": "An added passage."}) + "\n")
    with pytest.raises(DataError, match="does not match manifest.json"):
        Retriever.load(copy)
    with pytest.raises(DataError, match="not an fslm retrieval index"):
        Retriever.load(tmp_path)


def test_save_replaces_an_existing_index_whole(passage_file, tmp_path):
    out = tmp_path / "idx"
    Retriever.build([Passage("a", "alpha beta")]).save(out)
    Retriever.build(read_passages(passage_file)).save(out)
    assert len(Retriever.load(out).passages) == len(PASSAGES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp or old folder left behind


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['{"text": "ok"}', "{broken"], "passages.jsonl:2: not valid JSON"),
        (['{"id": "a"}'], "passages.jsonl:1: field 'text' must be a non-empty string"),
        (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], "passages.jsonl:2: duplicate id 'a'"),
        (["[1, 2]"], "expected a JSON object"),
        ([""], "no passages"),
    ],
)
def test_bad_passage_files_name_the_line_and_field(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "passages.jsonl", rows)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_passages(path)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.text(alphabet="abcdefgh xyz", min_size=1, max_size=30).filter(str.strip), min_size=1, max_size=8),
    st.integers(1, 5),
)
def test_search_returns_at_most_k_ranked_hits_from_the_corpus(texts, k):
    from bm25s.stopwords import STOPWORDS_EN

    passages = [Passage(str(i), t) for i, t in enumerate(texts)]
    indexable = any(len(w) > 1 and w not in STOPWORDS_EN for t in texts for w in t.split())
    if not indexable:
        with pytest.raises(InputError, match="indexable term"):
            Retriever.build(passages)
        return
    retriever = Retriever.build(passages)
    for row in retriever.search(texts, k=k):
        assert len(row) <= k
        assert len({h.passage.id for h in row}) == len(row)
        assert [h.rank for h in row] == list(range(1, len(row) + 1))
