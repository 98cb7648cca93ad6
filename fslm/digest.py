"""sha256 of files, streamed in 1 MiB blocks: weights, adapters and passage files are checked by content, not by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def hash_file(h: hashlib._Hash, path: str | Path) -> None:
    """Feed a file's bytes into `h` (several files can share one digest)."""
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    hash_file(h, path)
    return h.hexdigest()
