"""Writing fslm's own files so that a crash, a kill or a full disk never leaves half of one behind.

* `atomic_file` / `write_atomic` / `write_json` / `write_jsonl` replace a whole file: the bytes go to a temporary
  file in the same folder (so the rename cannot cross file systems), are fsynced, and only then renamed over the
  target with os.replace; on any error the temporary file is removed and the old file, if any, is untouched. The
  temporary file is created by mkstemp, mode 0600, and keeps that mode (logs and distilled data can hold private
  prompts);
* `append_jsonl` adds rows to a resumable store's JSONL as ONE write followed by fsync, so a kill leaves at most a
  torn last line, which the store's reader cuts off on resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO


@contextmanager
def atomic_file(path: str | Path, *, text: bool = False) -> Iterator[IO[Any]]:
    """A file handle (binary, or UTF-8 text with `text`) whose contents replace `path` when the block ends without
    an exception; for writers that stream (np.save, savefig, a log export) instead of handing over one string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file (str as UTF-8) via a temp file + fsync + os.replace, so readers never see half of it."""
    with atomic_file(path) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | Path, obj: object, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """`obj` as JSON (non-ASCII kept as is, a final newline), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=sort_keys) + "\n")


def jsonl_bytes(rows: Iterable[object]) -> bytes:
    """Rows as JSONL: one JSON value per line, UTF-8, non-ASCII kept as is."""
    return b"".join(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows)


def write_jsonl(path: str | Path, rows: Iterable[object]) -> int:
    """Replace `path` with `rows` as JSONL, streamed row by row into the temporary file; returns how many rows."""
    count = 0
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
    return count


def append_jsonl(target: str | Path | BinaryIO, rows: Iterable[object]) -> int:
    """Append `rows` to a JSONL file (a path, or a binary handle the caller holds open and locked) as ONE write, then
    flush and fsync: after this returns the rows survive a crash, and a kill during it tears only the last line.
    Every row is encoded before anything is written, so a row that cannot be written adds nothing. Returns how many
    rows were appended."""
    rows = list(rows)
    if not rows:
        return 0
    blob = jsonl_bytes(rows)
    if isinstance(target, (str, Path)):
        with open(target, "ab") as fh:
            _append(fh, blob)
    else:
        target.seek(0, os.SEEK_END)
        _append(target, blob)
    return len(rows)


def _append(fh: BinaryIO, blob: bytes) -> None:
    fh.write(blob)
    fh.flush()
    os.fsync(fh.fileno())
