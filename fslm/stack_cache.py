"""A persistent cache of stage generations, so systems that share a stage prefix generate it once.

Evaluating a stack and its ablations asks the same stage the same question many times: "without reasoning" runs
intent and facts on exactly the inputs the full stack already gave them. A greedy stage output is a pure function of
(base model, dtype, adapter weights, rendered input, generation settings), so that tuple is the key. Adapters are
keyed by the bytes of their files, not by path or stage name: a retrained adapter never hits an old entry.

The cost of a cached output is the cost measured when it was generated (tokens, seconds), so a system's cost
columns describe the system as configured; `hits` and `misses` say how much of a run was reused. Sampled stages
(temperature > 0) are never cached. SQLite: several evaluation processes may share one file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from fslm.digest import hash_file
from fslm.engine import Generation, GenerationParams
from fslm.errors import DataError
from fslm.io import MAX_DATA_BYTES, JsonError, append_jsonl, decode_text, iter_jsonl, loads_json, read_bytes

SCHEMA = "CREATE TABLE IF NOT EXISTS stage_outputs (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_digest(folder: str | Path | None) -> str | None:
    """sha256 of an adapter's config and weights (None: no adapter)."""
    if folder is None:
        return None
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = Path(folder) / name
        if not path.is_file():
            raise DataError(f"{path}: adapter file missing; a stage cache key needs the adapter's bytes")
        h.update(name.encode())
        hash_file(h, path)
    return h.hexdigest()


def cacheable(params: GenerationParams) -> bool:
    return params.temperature == 0.0


class StageCache:
    """Stage generations on disk, keyed by everything that determines them. Use as a context manager or `close()`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60.0)
            self._db.execute(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as err:
            raise DataError(f"{self.path}: not a usable stage cache ({err}); delete it or pick another path") from None
        self.hits = 0
        self.misses = 0
        self._adapters: dict[str, str | None] = {}

    def __enter__(self) -> StageCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def key(
        self, *, model: str, dtype: str | None, adapter: str | Path | None, text: str, params: GenerationParams
    ) -> str:
        where = None if adapter is None else str(adapter)
        if where not in self._adapters:
            self._adapters[where] = adapter_digest(adapter)
        blob = json.dumps(
            {"model": model, "dtype": dtype, "adapter": self._adapters[where], "input": text, "params": asdict(params)},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, value FROM stage_outputs WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for key, value in rows:
                found[key] = self._stored(value)
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        return found

    def _stored(self, value: str) -> Generation:
        """A row as written by put_many; a damaged file (edited, or from another version) is a DataError."""
        try:
            return _generation(loads_json(value))
        except (JsonError, TypeError) as err:
            raise DataError(
                f"{self.path}: damaged stage cache entry ({err}); delete the file, it is only a cache"
            ) from None

    def put_many(self, entries: dict[str, Generation]) -> None:
        """One transaction per batch: a killed run keeps every batch it finished."""
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO stage_outputs (key, value) VALUES (?, ?)",
                [(k, json.dumps(asdict(g), ensure_ascii=False)) for k, g in entries.items()],
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM stage_outputs").fetchone()[0])

    def export_jsonl(self, path: str | Path) -> int:
        """Append to a JSONL text copy the entries it lacks; returns how many. The text file can live where the
        SQLite file cannot (in git, beside the results), so a cache survives losing the machine it was built on."""
        import fcntl

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise DataError(f"{path}: not a regular file; give a .jsonl file path for the stage cache copy")
        with open(path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # two exporting processes append one after the other
            fh.seek(0)
            data = fh.read(MAX_DATA_BYTES + 1)
            if len(data) > MAX_DATA_BYTES:
                raise DataError(f"{path}: larger than {MAX_DATA_BYTES >> 20} MiB; start a new stage cache copy")
            complete = data[: data.rfind(b"\n") + 1]
            have = {key for key, _ in _entries(path, complete)}  # checked first: a wrong file is refused untouched
            if len(complete) < len(data):  # a torn last line from a killed export: drop it before appending
                if not data[len(complete) :].strip().startswith(b"{"):
                    raise DataError(f"{path}: its last line is not a stage cache entry, nor one cut short by a kill")
                fh.truncate(len(complete))
            rows = self._db.execute("SELECT key, value FROM stage_outputs ORDER BY rowid").fetchall()
            new = [(k, v) for k, v in rows if k not in have]
            append_jsonl(fh, ({"key": k, "value": asdict(self._stored(v))} for k, v in new))
        return len(new)

    def import_jsonl(self, path: str | Path) -> int:
        """Add the entries of a JSONL copy (`export_jsonl`) that this cache lacks; returns how many were added."""
        path = Path(path)
        if not path.is_file():
            return 0
        data = read_bytes(path)
        entries = _entries(path, data[: data.rfind(b"\n") + 1])  # after the last newline: a torn write, skipped
        before = len(self)
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO stage_outputs (key, value) VALUES (?, ?)", entries)
        return len(self) - before


def _entries(path: Path, complete: bytes) -> list[tuple[str, str]]:
    """(key, value JSON) of each line of an export's complete lines; a line that is not an entry is a DataError
    naming it. Lines are split on "\\n" only: the export writes U+2028 and friends raw inside strings."""
    entries = []
    expected = '{path}:{line}: not a stage cache entry ({problem}); expected {{"key": ..., "value": {{...}}}}'
    for number, row in iter_jsonl(path, text=decode_text(path, complete), bad_line=expected):
        try:
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("key"), str)
                or not isinstance(row.get("value"), dict)
            ):
                raise TypeError("not a JSON object with a string 'key' and an object 'value'")
            value = _generation(row["value"])
        except TypeError as err:
            raise DataError(expected.format(path=path, line=number, problem=err)) from None
        entries.append((row["key"], json.dumps(asdict(value), ensure_ascii=False)))
    return entries


def _generation(value: dict) -> Generation:
    """A cached Generation, its fields checked: the cost columns sum tokens_in/out and seconds later. Extra fields
    (a speculative engine's drafted/accepted counts) are dropped; a missing one is an error."""
    names = [f.name for f in fields(Generation)]
    missing = [n for n in names if n not in value]
    if missing:
        raise TypeError(f"missing field(s) {missing}")
    gen = Generation(**{n: value[n] for n in names})
    numbers = {"tokens_in": (int,), "tokens_out": (int,), "seconds": (int, float)}
    for name, kinds in numbers.items():
        number = getattr(gen, name)
        if isinstance(number, bool) or not isinstance(number, kinds) or not 0 <= number < float("inf"):
            raise TypeError(f"{name!r} must be a non-negative number, got {number!r}")
    if not isinstance(gen.text, str) or gen.finish_reason not in ("stop", "length"):
        raise TypeError("'text' must be a string and 'finish_reason' 'stop' or 'length'")
    return gen


__all__ = ["StageCache", "adapter_digest", "cacheable"]
