"""Lightweight retrieval (BM25 via bm25s): passages a stage can read instead of generating its text.

A 135M model asked to "recall facts" mostly restates the options it was shown; a retrieval stage brings in text the
model does not already have. `corpus` builds passage files from train/dev splits (never an evaluated item), `index`
builds, saves and searches a BM25 index over them.
"""

from fslm.retrieve.index import Hit, Passage, Retriever, index_passages, read_passages, search, write_passages

__all__ = ["Hit", "Passage", "Retriever", "index_passages", "read_passages", "search", "write_passages"]
