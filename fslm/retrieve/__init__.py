"""Lightweight retrieval (BM25 via bm25s, dense all-MiniLM-L6-v2, or both fused): passages a stage can read instead of
generating its text.

A 135M model asked to "recall facts" mostly restates the options it was shown; a retrieval stage brings in text the
model does not already have. `corpus` builds passage files from train/dev splits (never an evaluated item), `index`
builds, saves and searches an index over them (kind bm25, dense or hybrid; `dense` holds the embedding and fusion).
"""

from fslm.retrieve.index import Hit, Passage, Retriever, index_passages, read_passages, search, write_passages

__all__ = ["Hit", "Passage", "Retriever", "index_passages", "read_passages", "search", "write_passages"]
