"""An index folder that holds a recipe instead of arrays: how to rebuild its corpus from the benchmark data.

A stack that retrieves solved benchmark questions needs tens of MB of passages and BM25 arrays, too much to ship in
git, while the data they come from is already on any machine that evaluates. So a stack's index folder may hold only
`recipe.json`: the `fslm retrieve corpus` options and the sha256 of the passages the stack was measured with. The
first search builds the corpus from FSLM_DATA_DIR and its index once, into the cache (like a model conversion), and
reuses it after. Built from other data (another data folder, a changed file), the passages differ from the measured
ones: said once, since the stack's published numbers may not hold there. With no benchmark data at all the stage
finds nothing (said once), so free-form prompts and `fslm run` still work on a bare install.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fslm.errors import DataError
from fslm.retrieve.index import MANIFEST, Hit, Passage, Retriever

RECIPE = "recipe.json"
_FIELDS = {"sources", "heldout_keep", "eval_tail"}
_NOTED: set[str] = set()


def read_recipe(index_dir: str | Path) -> dict | None:
    """The folder's recipe ({"corpus": {...}, "passages_sha256": s}), checked; None when it holds a built index."""
    path = Path(index_dir) / RECIPE
    if not path.is_file() or (Path(index_dir) / MANIFEST).is_file():
        return None
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg})") from None
    corpus = recipe.get("corpus") if isinstance(recipe, dict) else None
    if not isinstance(corpus, dict) or not set(corpus) <= _FIELDS:
        raise DataError(f"{path}: field 'corpus' must be an object with keys among {sorted(_FIELDS)}")
    sources = corpus.get("sources")
    if sources is not None and not (isinstance(sources, list) and all(isinstance(x, str) for x in sources)):
        raise DataError(f"{path}: field 'corpus.sources' must be a list of task names or null")
    for key, value in corpus.items():
        if (
            key != "sources"
            and value is not None
            and (not isinstance(value, int) or isinstance(value, bool) or value < 0)
        ):
            raise DataError(f"{path}: field 'corpus.{key}' must be a non-negative integer or null")
    sha = recipe.get("passages_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise DataError(f"{path}: field 'passages_sha256' must be a 64-character hex digest")
    return recipe


def cache_folder(recipe: dict) -> Path:
    """Where the recipe's index is built: keyed by the corpus options and the data folder it is read from."""
    from fslm.settings import get_settings

    settings = get_settings()
    key = json.dumps({"corpus": recipe["corpus"], "data": str(settings.data_dir.resolve())}, sort_keys=True)
    return settings.cache_dir / "indexes" / hashlib.sha256(key.encode()).hexdigest()[:16]


def build_from_recipe(recipe: dict) -> Path:
    """The recipe's index folder in the cache, built (corpus, then BM25; about 10 s) when missing."""
    from fslm.retrieve.corpus import write_corpus
    from fslm.retrieve.index import index_passages

    out = cache_folder(recipe)
    if not (out / MANIFEST).is_file():
        print(f"building the retrieval index from the benchmark data into {out} (once)…", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            corpus = Path(tmp) / "corpus.jsonl"
            options = dict(recipe["corpus"])
            write_corpus(corpus, options.pop("sources", None), **options)
            index_passages(corpus, out)
    return out


def _note_once(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        print(message, file=sys.stderr)


class RecipeRetriever:
    """A Retriever built on first use from a recipe folder; with no benchmark data it finds nothing (said once)."""

    def __init__(self, index_dir: str | Path, recipe: dict):
        self.index_dir = Path(index_dir)
        self.recipe = recipe
        self._inner: Retriever | None = None
        self._missing = False

    def _load(self) -> Retriever | None:
        if self._inner is None and not self._missing:
            try:
                self._inner = Retriever.load(build_from_recipe(self.recipe))
            except DataError as err:
                self._missing = True
                _note_once(f"note: {self.index_dir}: no retrieval corpus ({err}); the stage finds no passage")
                return None
            want, got = self.recipe.get("passages_sha256"), self._inner.manifest.get("passages_sha256")
            if want and got != want:
                _note_once(
                    f"note: {self.index_dir}: the corpus built from this data folder differs from the one this "
                    f"stack was measured with (passages sha256 {got[:12]}…, expected {want[:12]}…)"
                )
        return self._inner

    @property
    def passages(self) -> list[Passage]:
        inner = self._load()
        return inner.passages if inner else []

    @property
    def manifest(self) -> dict:
        inner = self._load()
        return inner.manifest if inner else {"passages": 0, "recipe": self.recipe}

    def search(self, queries: Sequence[str], k: int = 3, **kwargs) -> list[list[Hit]]:
        inner = self._load()
        return inner.search(queries, k, **kwargs) if inner else [[] for _ in queries]


def open_index(index_dir: str | Path) -> Retriever | RecipeRetriever:
    """A built index folder loads now; a recipe folder builds on first use."""
    recipe = read_recipe(index_dir)
    return RecipeRetriever(index_dir, recipe) if recipe is not None else Retriever.load(index_dir)


__all__ = ["RECIPE", "RecipeRetriever", "build_from_recipe", "cache_folder", "open_index", "read_recipe"]
