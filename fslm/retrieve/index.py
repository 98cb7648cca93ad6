"""A retrieval index over a passage file, saved as a folder: BM25 (bm25s), dense (all-MiniLM-L6-v2) or hybrid (both,
fused by reciprocal rank fusion; fslm/retrieve/dense.py). No pickle anywhere.

Index folder layout (written to a temp folder, then renamed, so a crash never leaves half an index):
  passages.jsonl   one {"id", "text", "source"} per line, in index order
  manifest.json    kind, passage count, sha256 of passages.jsonl, tokenizer settings, fslm version; for dense and
                   hybrid also the embedding model id, the sha256 of embeddings.npy and the seconds spent embedding
  bm25/            (bm25, hybrid) bm25s.BM25.save output (params/vocab JSON, CSC score arrays as .npy)
  embeddings.npy   (dense, hybrid) float16 [passages, 384] L2-normalised MiniLM vectors, allow_pickle=False
A bm25 index keeps format "fslm-bm25-v1" (what earlier fslm versions wrote and read); dense and hybrid indexes say
"fslm-retrieve-v2", which an older fslm refuses by name instead of misreading.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fslm.digest import file_sha256
from fslm.errors import DataError, InputError
from fslm.extras import require
from fslm.io import iter_jsonl, write_jsonl
from fslm.tasks import normalize_text

MANIFEST = "manifest.json"
PASSAGES = "passages.jsonl"
BM25_DIR = "bm25"
FORMAT = "fslm-bm25-v1"  # a bm25 index (no "kind" in manifests written before dense retrieval existed)
FORMAT_V2 = "fslm-retrieve-v2"  # a dense or hybrid index
KINDS = ("bm25", "dense", "hybrid")
MODES = {"bm25": ("bm25",), "dense": ("dense",), "hybrid": ("hybrid", "bm25", "dense")}  # what each kind can search
STOPWORDS = "en"  # bm25s's English list
STEMMER = "english"  # PyStemmer's Snowball stemmer: "boiling" finds "boils"


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    source: str = ""  # where it came from, e.g. "openbookqa/train:12" or "alpaca:431"


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # BM25 score, cosine, or (hybrid) reciprocal rank fusion sum
    rank: int  # 1 = best
    parts: tuple[tuple[str, int, float], ...] = ()  # hybrid: (list, rank in it, score in it) per list that found it


def read_passages(path: str | Path) -> list[Passage]:
    """A passage JSONL file: one object per line with "text" (required), "id" and "source" (optional). Ids default to
    the line number and must be unique; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: passage file not found")
    passages: list[Passage] = []
    seen: set[str] = set()
    for line_no, obj in iter_jsonl(path):
        where = f"{path}:{line_no}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with a 'text' field, got {type(obj).__name__}")
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'text' must be a non-empty string")
        pid = obj.get("id", str(line_no))
        if not isinstance(pid, (str, int)):
            raise DataError(f"{where}: field 'id' must be a string or integer, got {type(pid).__name__}")
        pid = str(pid)
        if pid in seen:
            raise DataError(f"{where}: duplicate id {pid!r}; passage ids must be unique")
        seen.add(pid)
        source = obj.get("source", "")
        if not isinstance(source, str):
            raise DataError(f"{where}: field 'source' must be a string")
        passages.append(Passage(pid, text.strip(), source))
    if not passages:
        raise DataError(f'{path}: no passages; expected JSONL lines like {{"text": "..."}}')
    return passages


def write_passages(passages: Iterable[Passage], path: str | Path) -> int:
    """Write passages as JSONL via a temp file + rename; returns how many were written."""
    return write_jsonl(path, (asdict(p) for p in passages))


OVERLAP_NGRAM = 8  # words: a shared run this long is a copy of the item, not a related question
_WORD = re.compile(r"\w+")


def _tokenize(texts: Sequence[str]):
    require("retrieve", "BM25 retrieval")
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, stemmer=Stemmer.Stemmer(STEMMER), show_progress=False)


def check_kind(kind: str, what: str = "kind") -> str:
    if kind not in KINDS:
        raise InputError(f"{what}: {kind!r} is not an index kind; choose one of {', '.join(KINDS)}")
    return kind


def read_manifest(index_dir: str | Path) -> dict:
    """An index folder's manifest, checked to be one this fslm reads (what a distilled file records of an index).
    A manifest without "kind" (written before dense retrieval existed) is a bm25 index."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{index_dir}: not an fslm retrieval index (no {MANIFEST}); build one with `fslm retrieve index`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object; rebuild the index")
    kind = manifest.get("kind", "bm25")
    expected = FORMAT if kind == "bm25" else FORMAT_V2
    if (
        kind not in KINDS
        or manifest.get("format") != expected
        or manifest.get("stemmer") != STEMMER
        or manifest.get("stopwords") != STOPWORDS
    ):
        raise DataError(
            f"{path}: built as {manifest.get('format')!r} kind {kind!r} (stemmer {manifest.get('stemmer')!r}, "
            f"stopwords {manifest.get('stopwords')!r}); this fslm reads {FORMAT!r} (bm25) and {FORMAT_V2!r} "
            f"(dense, hybrid) with ({STEMMER!r}, {STOPWORDS!r}): rebuild the index"
        )
    return {**manifest, "kind": kind}


class Retriever:
    """Top-k search over passages by BM25, dense cosine or both fused (RRF). Build from passages, save to a folder,
    load it back (no pickle anywhere). `kind` is what the index holds; `search(mode=...)` may pick a part of a hybrid
    index."""

    def __init__(self, bm25, passages: list[Passage], manifest: dict, dense=None):
        self._bm25 = bm25
        self._dense = dense
        self.passages = passages
        self.manifest = manifest
        self.kind: str = manifest.get("kind", "bm25")

    @classmethod
    def build(
        cls,
        passages: Sequence[Passage],
        kind: str = "bm25",
        *,
        checkpoint: str | Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Retriever:
        """`checkpoint`: a folder where a dense build keeps each embedded chunk, so a rerun resumes (dense.py)."""
        check_kind(kind)
        if not passages:
            raise InputError("cannot build an index over zero passages")
        if kind != "bm25":
            from fslm.retrieve.dense import check_available

            check_available()  # before any work
        manifest: dict = {
            "format": FORMAT if kind == "bm25" else FORMAT_V2,
            "kind": kind,
            "passages": len(passages),
            "stopwords": STOPWORDS,
            "stemmer": STEMMER,
        }
        bm25 = dense = None
        if kind in ("bm25", "hybrid"):
            import bm25s

            tokens = _tokenize([p.text for p in passages])
            if not tokens.vocab:
                raise InputError(
                    f"none of the {len(passages)} passages has an indexable term (a word of 2+ letters that is "
                    "not an English stopword); nothing to search"
                )
            bm25 = bm25s.BM25()
            bm25.index(tokens, show_progress=False)
            manifest.update(k1=bm25.k1, b=bm25.b, method=bm25.method)
        if kind in ("dense", "hybrid"):
            from fslm.retrieve import dense as dn

            vectors, seconds = dn.embed_passages([p.text for p in passages], checkpoint=checkpoint, progress=progress)
            dense = dn.DenseIndex(vectors)
            manifest.update(model=dn.model_id(), dim=dn.DIM, dtype="float16", embed_seconds=seconds)
            if kind == "hybrid":
                manifest.update(fusion="rrf", rrf_k=dn.RRF_K, fuse_depth=dn.FUSE_DEPTH)
        return cls(bm25, list(passages), manifest, dense)

    def save(self, out_dir: str | Path) -> Path:
        """Write the index folder atomically (an existing folder is replaced only once the new one is complete)."""
        from fslm.version import __version__

        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
        try:
            write_passages(self.passages, tmp / PASSAGES)
            manifest = {**self.manifest, "passages_sha256": file_sha256(tmp / PASSAGES)}
            if self._bm25 is not None:
                self._bm25.save(str(tmp / BM25_DIR), allow_pickle=False, show_progress=False)
            if self._dense is not None:
                manifest["embeddings_sha256"] = self._dense.save(tmp)
            manifest["fslm"] = __version__
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.manifest = manifest
        return out_dir

    @classmethod
    def load(cls, index_dir: str | Path) -> Retriever:
        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        kind = manifest["kind"]
        if kind in ("bm25", "hybrid"):
            require("retrieve", "BM25 retrieval")
        if kind in ("dense", "hybrid"):
            from fslm.retrieve import dense as dn

            dn.check_available()
        passages = read_passages(index_dir / PASSAGES)
        if len(passages) != manifest.get("passages") or file_sha256(index_dir / PASSAGES) != manifest.get(
            "passages_sha256"
        ):
            raise DataError(
                f"{index_dir / PASSAGES}: does not match {MANIFEST} (edited after indexing?); rebuild the index"
            )
        bm25 = dense = None
        if kind in ("bm25", "hybrid"):
            import bm25s

            if not (index_dir / BM25_DIR).is_dir():
                raise DataError(f"{index_dir / BM25_DIR}: missing (the index's BM25 part); rebuild the index")
            try:
                bm25 = bm25s.BM25.load(str(index_dir / BM25_DIR), allow_pickle=False, show_progress=False)
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
                raise DataError(f"{index_dir / BM25_DIR}: unreadable ({err}); rebuild the index") from None
        if kind in ("dense", "hybrid"):
            dense = dn.DenseIndex.load(index_dir, manifest)
        return cls(bm25, passages, manifest, dense)

    def _bm25_lists(self, queries: Sequence[str], depth: int) -> list[list[tuple[int, float]]]:
        docs, scores = self._bm25.retrieve(
            _tokenize(queries), k=min(depth, len(self.passages)), show_progress=False, n_threads=1
        )
        return [
            [(int(d), float(s)) for d, s in zip(row_docs, row_scores, strict=True) if s > 0]
            for row_docs, row_scores in zip(docs, scores, strict=True)
        ]

    def _dense_lists(self, queries: Sequence[str], depth: int) -> list[list[tuple[int, float]]]:
        from fslm.retrieve.dense import embed

        return self._dense.search(embed(queries), depth)

    def ranked(self, queries: Sequence[str], depth: int, mode: str) -> list[list[tuple[int, float, tuple]]]:
        """Per query, up to `depth` (passage row, score, parts) best first; for hybrid, `parts` holds each list's
        (mode, rank, score) of the passage, and the score is its RRF sum."""
        if mode == "bm25":
            return [[(i, s, ()) for i, s in row] for row in self._bm25_lists(queries, depth)]
        if mode == "dense":
            return [[(i, s, ()) for i, s in row] for row in self._dense_lists(queries, depth)]
        from fslm.retrieve.dense import FUSE_DEPTH, fuse

        depth_each = max(depth, FUSE_DEPTH)
        lexical, semantic = self._bm25_lists(queries, depth_each), self._dense_lists(queries, depth_each)
        return [fuse(lex, sem)[:depth] for lex, sem in zip(lexical, semantic, strict=True)]

    def check_mode(self, mode: str | None) -> str:
        mode = self.kind if mode is None else mode
        if mode not in MODES[self.kind]:
            held = " and ".join(("bm25", "dense") if self.kind == "hybrid" else (self.kind,))
            raise InputError(
                f"mode {mode!r}: this index ({self.kind}) holds {held} only; choose one of "
                f"{', '.join(MODES[self.kind])} or build an index with `--kind {mode}`"
                if mode in KINDS
                else f"mode {mode!r}: not a search mode; choose one of {', '.join(MODES[self.kind])}"
            )
        return mode

    def search(
        self,
        queries: Sequence[str],
        k: int = 3,
        *,
        mode: str | None = None,
        avoid: Sequence[str | None] | None = None,
        overlap_with: Sequence[str | None] | None = None,
        ngram: int = OVERLAP_NGRAM,
    ) -> list[list[Hit]]:
        """The k best passages per query, best first, by `mode` (default: the index's kind; a hybrid index can also
        search by bm25 or dense alone). BM25 leaves out passages that share no term with the query (a query of
        stopwords only gets no hits); dense ranks every passage. `avoid[i]`: drop query i's hits whose text contains
        this text (whitespace and case aside), e.g. the record being distilled, so a stage never reads its own
        answer. `overlap_with[i]`: drop query i's hits that share a run of `ngram` words with this text (case and
        punctuation aside): n-gram decontamination for when the item's id is unknown (lm-eval's requests)."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        mode = self.check_mode(mode)
        for name, extra in (("avoid", avoid), ("overlap_with", overlap_with)):
            if extra is not None and len(extra) != len(queries):
                raise InputError(f"{name} has {len(extra)} entries for {len(queries)} queries")
        if not queries:
            return []
        filtered = avoid is not None or overlap_with is not None
        fetch = min(k + (_AVOID_SLACK if filtered else 0), len(self.passages))
        results: list[list[Hit]] = []
        for i, row in enumerate(self.ranked(queries, fetch, mode)):
            banned = normalize_text(avoid[i]) if avoid is not None and avoid[i] else None
            found = [(self.passages[d], s, parts) for d, s, parts in row]
            kept = [x for x in found if banned is None or banned not in normalize_text(x[0].text)]
            if overlap_with is not None and overlap_with[i]:
                kept = [x for x in kept if not shares_run(overlap_with[i], x[0].text, ngram)]
            results.append([Hit(p, s, rank, parts) for rank, (p, s, parts) in enumerate(kept[:k], 1)])
        return results


_AVOID_SLACK = 5  # extra hits fetched when some may be avoided


def shares_run(a: str, b: str, n: int = OVERLAP_NGRAM) -> bool:
    """Whether a and b share a run of n words (casefolded, punctuation dropped); a text shorter than n words shares
    a run when all of it appears in the other."""
    words_a, words_b = _WORD.findall(a.casefold()), _WORD.findall(b.casefold())
    size = min(n, len(words_a), len(words_b))
    if size == 0:
        return False
    runs = {tuple(words_a[i : i + size]) for i in range(len(words_a) - size + 1)}
    return any(tuple(words_b[i : i + size]) in runs for i in range(len(words_b) - size + 1))


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where a dense build of `out_dir` keeps its embedded chunks until the index is saved (next to it, hidden)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.embedding")


def index_passages(
    passages_path: str | Path,
    out_dir: str | Path,
    kind: str = "bm25",
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Retriever:
    """Python twin of `fslm retrieve index`. A dense or hybrid build interrupted after some chunks resumes from
    them when run again with the same passages and `out_dir`."""
    check_kind(kind)
    retriever = Retriever.build(
        read_passages(passages_path), kind, checkpoint=checkpoint_dir(out_dir), progress=progress
    )
    retriever.save(out_dir)
    shutil.rmtree(checkpoint_dir(out_dir), ignore_errors=True)
    return retriever


def search(index_dir: str | Path, queries: Sequence[str], k: int = 3, mode: str | None = None) -> list[list[Hit]]:
    """Python twin of `fslm retrieve search`."""
    return Retriever.load(index_dir).search(queries, k, mode=mode)
