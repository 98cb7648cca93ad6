"""Index folders that hold a recipe: built from the benchmark data on first search, cached, checked."""

from __future__ import annotations

import json

import pytest

from fslm.errors import DataError
from fslm.retrieve import Retriever
from fslm.retrieve.corpus import write_corpus
from fslm.retrieve.recipe import RecipeRetriever, cache_folder, open_index, read_recipe
from fslm.settings import get_settings, reset_settings

needs_data = pytest.mark.skipif(
    not (get_settings().data_dir / "arc_challenge").is_dir(), reason="shared benchmark data not found"
)
CORPUS = {"sources": ["arc_challenge"], "heldout_keep": 100, "eval_tail": 300}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    reset_settings()
    yield tmp_path / "cache"
    reset_settings()


def write_recipe(folder, recipe) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.json").write_text(json.dumps(recipe) if not isinstance(recipe, str) else recipe)
    return folder


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ("{not json", "not valid JSON"),
        ({"corpus": {"heldout": 1}}, "'corpus'"),
        ({"corpus": {"eval_tail": -1}}, "corpus.eval_tail"),
        ({"corpus": {"heldout_keep": True}}, "corpus.heldout_keep"),
        ({"corpus": {"sources": "arc_easy"}}, "corpus.sources"),
        ({"corpus": {}, "passages_sha256": "abc"}, "passages_sha256"),
        ([], "'corpus'"),
    ],
)
def test_a_bad_recipe_names_its_field(tmp_path, recipe, field):
    folder = write_recipe(tmp_path / "idx", recipe)
    with pytest.raises(DataError, match=field):
        read_recipe(folder)


def test_a_built_index_is_not_a_recipe(index_dir):
    assert read_recipe(index_dir) is None
    assert isinstance(open_index(index_dir), Retriever)


@needs_data
def test_first_search_builds_the_index_once_and_matches_a_direct_build(tmp_path, cache, capsys):
    folder = write_recipe(tmp_path / "idx", {"corpus": CORPUS})
    lazy = open_index(folder)
    assert isinstance(lazy, RecipeRetriever) and not (cache / "indexes").exists()  # nothing built at load
    corpus = tmp_path / "direct.jsonl"
    write_corpus(corpus, ["arc_challenge"], heldout_keep=100, eval_tail=300)
    direct = Retriever.load(_index(corpus, tmp_path))
    query = ["Which gas do plants take in from the air to make food?"]
    got = [(h.passage.id, round(h.score, 4)) for h in lazy.search(query, k=3)[0]]
    want = [(h.passage.id, round(h.score, 4)) for h in direct.search(query, k=3)[0]]
    assert got == want and len(got) == 3
    built = cache_folder(read_recipe(folder))
    stamp = (built / "manifest.json").stat().st_mtime_ns
    assert "building the retrieval index" in capsys.readouterr().err
    again = open_index(folder)
    assert len(again.passages) == len(lazy.passages) > 0
    assert (built / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert "building" not in capsys.readouterr().err


def _index(corpus, tmp_path):
    from fslm.retrieve import index_passages

    index_passages(corpus, tmp_path / "direct-index")
    return tmp_path / "direct-index"


@needs_data
def test_other_passages_than_the_measured_ones_are_said_once(tmp_path, cache, capsys):
    folder = write_recipe(tmp_path / "idx", {"corpus": CORPUS, "passages_sha256": "0" * 64})
    lazy = open_index(folder)
    lazy.search(["a magnet attracts iron"], k=1)
    lazy.search(["a magnet attracts iron"], k=1)
    err = capsys.readouterr().err
    assert err.count("differs from the one this stack was measured with") == 1


def test_no_benchmark_data_finds_nothing_and_says_so(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("FSLM_DATA_DIR", str(tmp_path / "nowhere"))
    reset_settings()
    lazy = open_index(write_recipe(tmp_path / "idx", {"corpus": CORPUS}))
    assert lazy.search(["water boils", "cats"], k=2) == [[], []]
    assert lazy.passages == []
    assert "no retrieval corpus" in capsys.readouterr().err


@needs_data
def test_a_stack_with_a_recipe_index_validates_loads_without_building_and_retrieves(tmp_path, cache):
    import yaml

    from fslm.config import load_stack_config
    from fslm.stack_checks import validate_stack
    from fslm.stages.retrieve import load_retrievers

    write_recipe(tmp_path / "index", {"corpus": CORPUS})
    stack = {
        "name": "r",
        "stages": [
            {"name": "related", "retrieve": {"index": "index", "k": 2}},
            {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "related"]},
        ],
    }
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(stack))
    validate_stack(tmp_path / "stack.yaml")
    retrievers = load_retrievers(load_stack_config(tmp_path / "stack.yaml"))
    assert not (cache / "indexes").exists()
    hits = retrievers["related"].search(["Which metal does a magnet attract?"], k=2)[0]
    assert len(hits) == 2 and all(h.passage.id.startswith("arc_challenge/") for h in hits)
