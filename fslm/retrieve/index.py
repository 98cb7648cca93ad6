"""A BM25 index over a passage file, saved as a folder: bm25s's arrays (numpy, no pickle), the passages and a manifest.

Index folder layout (written to a temp folder, then renamed, so a crash never leaves half an index):
  passages.jsonl   one {"id", "text", "source"} per line, in index order
  manifest.json    passage count, sha256 of passages.jsonl, tokenizer settings, fslm version
  bm25/            bm25s.BM25.save output (params/vocab JSON, CSC score arrays as .npy, allow_pickle=False)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fslm.digest import file_sha256
from fslm.errors import DataError, InputError
from fslm.extras import require
from fslm.io import JsonError, lines, loads_json, read_text
from fslm.tasks import normalize_text

MANIFEST = "manifest.json"
PASSAGES = "passages.jsonl"
BM25_DIR = "bm25"
FORMAT = "fslm-bm25-v1"
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
    score: float
    rank: int  # 1 = best


def read_passages(path: str | Path) -> list[Passage]:
    """A passage JSONL file: one object per line with "text" (required), "id" and "source" (optional). Ids default to
    the line number and must be unique; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: passage file not found")
    passages: list[Passage] = []
    seen: set[str] = set()
    for line_no, line in lines(read_text(path)):
        where = f"{path}:{line_no}"
        try:
            obj = loads_json(line)
        except JsonError as err:
            raise DataError(f"{where}: not valid JSON ({err})") from None
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as fh:
        for p in passages:
            fh.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
            n += 1
    os.replace(fh.name, path)
    return n


OVERLAP_NGRAM = 8  # words: a shared run this long is a copy of the item, not a related question
_WORD = re.compile(r"\w+")


def _tokenize(texts: Sequence[str]):
    require("retrieve", "BM25 retrieval")
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, stemmer=Stemmer.Stemmer(STEMMER), show_progress=False)


def read_manifest(index_dir: str | Path) -> dict:
    """An index folder's manifest, checked to be one this fslm reads (what a distilled file records of an index)."""
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
    if manifest.get("format") != FORMAT or manifest.get("stemmer") != STEMMER or manifest.get("stopwords") != STOPWORDS:
        raise DataError(
            f"{path}: built as {manifest.get('format')!r} (stemmer {manifest.get('stemmer')!r}, "
            f"stopwords {manifest.get('stopwords')!r}); this fslm reads {FORMAT!r} ({STEMMER!r}, "
            f"{STOPWORDS!r}): rebuild the index"
        )
    return manifest


class Retriever:
    """BM25 top-k search over passages. Build from passages, save to a folder, load it back (no pickle anywhere)."""

    def __init__(self, bm25, passages: list[Passage], manifest: dict):
        self._bm25 = bm25
        self.passages = passages
        self.manifest = manifest

    @classmethod
    def build(cls, passages: Sequence[Passage]) -> Retriever:
        import bm25s

        if not passages:
            raise InputError("cannot build an index over zero passages")
        tokens = _tokenize([p.text for p in passages])
        if not tokens.vocab:
            raise InputError(
                f"none of the {len(passages)} passages has an indexable term (a word of 2+ letters that is "
                "not an English stopword); nothing to search"
            )
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=False)
        manifest = {
            "format": FORMAT,
            "passages": len(passages),
            "stopwords": STOPWORDS,
            "stemmer": STEMMER,
            "k1": bm25.k1,
            "b": bm25.b,
            "method": bm25.method,
        }
        return cls(bm25, list(passages), manifest)

    def save(self, out_dir: str | Path) -> Path:
        """Write the index folder atomically (an existing folder is replaced only once the new one is complete)."""
        from fslm import __version__

        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
        try:
            write_passages(self.passages, tmp / PASSAGES)
            self._bm25.save(str(tmp / BM25_DIR), allow_pickle=False, show_progress=False)
            manifest = {**self.manifest, "passages_sha256": file_sha256(tmp / PASSAGES), "fslm": __version__}
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
        require("retrieve", "BM25 retrieval")
        import bm25s

        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        passages = read_passages(index_dir / PASSAGES)
        if len(passages) != manifest.get("passages") or file_sha256(index_dir / PASSAGES) != manifest.get(
            "passages_sha256"
        ):
            raise DataError(
                f"{index_dir / PASSAGES}: does not match {MANIFEST} (edited after indexing?); rebuild the index"
            )
        bm25 = bm25s.BM25.load(str(index_dir / BM25_DIR), allow_pickle=False, show_progress=False)
        return cls(bm25, passages, manifest)

    def search(
        self,
        queries: Sequence[str],
        k: int = 3,
        *,
        avoid: Sequence[str | None] | None = None,
        overlap_with: Sequence[str | None] | None = None,
        ngram: int = OVERLAP_NGRAM,
    ) -> list[list[Hit]]:
        """The k best passages per query, best first; passages that share no term with the query are left out
        (a query of stopwords only gets no hits). `avoid[i]`: drop query i's hits whose text contains this text
        (whitespace and case aside), e.g. the record being distilled, so a stage never reads its own answer.
        `overlap_with[i]`: drop query i's hits that share a run of `ngram` words with this text (case and
        punctuation aside): n-gram decontamination for when the item's id is unknown (lm-eval's requests)."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        for name, extra in (("avoid", avoid), ("overlap_with", overlap_with)):
            if extra is not None and len(extra) != len(queries):
                raise InputError(f"{name} has {len(extra)} entries for {len(queries)} queries")
        if not queries:
            return []
        filtered = avoid is not None or overlap_with is not None
        fetch = min(k + (_AVOID_SLACK if filtered else 0), len(self.passages))
        docs, scores = self._bm25.retrieve(_tokenize(queries), k=fetch, show_progress=False, n_threads=1)
        results: list[list[Hit]] = []
        for i, (row_docs, row_scores) in enumerate(zip(docs, scores, strict=True)):
            banned = normalize_text(avoid[i]) if avoid is not None and avoid[i] else None
            found = [(self.passages[int(d)], float(s)) for d, s in zip(row_docs, row_scores, strict=True) if s > 0]
            kept = [(p, s) for p, s in found if banned is None or banned not in normalize_text(p.text)]
            if overlap_with is not None and overlap_with[i]:
                kept = [(p, s) for p, s in kept if not shares_run(overlap_with[i], p.text, ngram)]
            results.append([Hit(p, s, rank) for rank, (p, s) in enumerate(kept[:k], 1)])
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


def index_passages(passages_path: str | Path, out_dir: str | Path) -> Retriever:
    """Python twin of `fslm retrieve index`."""
    retriever = Retriever.build(read_passages(passages_path))
    retriever.save(out_dir)
    return retriever


def search(index_dir: str | Path, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
    """Python twin of `fslm retrieve search`."""
    return Retriever.load(index_dir).search(queries, k)
