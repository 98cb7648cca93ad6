"""The distilled JSONL file: append-only, one line per instruction, fsynced per batch, safe to kill at any moment.

A kill can only leave a partial LAST line (each batch is one write); reopening cuts it off, and the ids already on
disk are skipped, so a rerun finishes the job with every record exactly once.

Resuming is only right when the records on disk were written the same way: a sidecar `<file>.identity.json` holds
what shaped them (stage and teacher prompts, hint mode, teacher), and a rerun with a different setup is refused
instead of silently mixing two kinds of record in one file.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from fslm.errors import DataError
from fslm.io import JsonError, append_jsonl, decode_text, iter_jsonl, loads_json, read_bytes, read_text, write_json


def _records(path: Path, data: bytes, noun: str = "distilled") -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line of `data`, the complete lines of a distilled (or other
    `noun`) file."""
    records = []
    corrupt = "{path}: line {line}: corrupt " + noun + " record ({problem}); fix or delete that line"
    for number, record in iter_jsonl(path, text=decode_text(path, data), bad_line=corrupt):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise DataError(f"{path}: line {number}: a {noun} record must be a JSON object with a string 'id'")
        records.append((number, record))
    return records


def identity_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".identity.json")


def identity_mismatch(path: Path, stored: dict, wanted: dict) -> str | None:
    """Why records written under `stored` must not be resumed under `wanted` (None: they may)."""
    problems = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"{key} differs for {', '.join(changed)}")
        else:
            problems.append(f"{key}: file has {a!r}, this run has {b!r}")
    if not problems:
        return None
    return (
        f"{path}: its records were distilled with a different setup ({'; '.join(problems)}). Write to a new --out, "
        f"delete the file, or redistill only the changed stages with --reuse {path} --redo STAGE into a new file"
    )


def setup_mismatch(path: Path, stored: dict, wanted: dict, what: str, remedy: str) -> str | None:
    """Why a file whose `what` (e.g. "scores came from") a setup `stored` must not be resumed under `wanted`, key by
    key; None: it may."""
    changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if not changed:
        return None
    shown = "; ".join(f"{k}: file has {stored.get(k)!r}, this run has {wanted.get(k)!r}" for k in changed)
    return f"{path}: its {what} a different setup ({shown}); {remedy}"


class DistillStore:
    """Open for appending; `done` holds the ids already written. Use as a context manager (holds a file lock).

    With `identity`, the file's sidecar must match it (a new or empty file gets it; a file written before sidecars
    existed adopts it, since nothing on disk says otherwise). Other resumable JSONL files (curation scores,
    synthesized instructions) subclass it, naming themselves in `noun` and `verb` and, with `keep_records`, keeping
    the records already on disk in `records`."""

    noun = "distilled"
    verb = "fslm distill"
    keep_records = False

    def __init__(self, path: str | Path, identity: dict | None = None):
        self.path = Path(path)
        self.identity = identity
        self.done: set[str] = set()
        self.teachers: set[str] = set()  # teacher ids found on the records already written
        self.repaired_bytes = 0
        self.records: list[dict] = []  # with keep_records: the complete records found on disk, in file order
        self._fh = None

    def __enter__(self) -> DistillStore:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+b")
        except OSError as err:
            raise DataError(f"{self.path}: cannot write the {self.noun} file here ({err.strerror or err})") from None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise DataError(
                f"{self.path}: another `{self.verb}` is writing this file; wait for it or pick another output file"
            ) from None
        try:
            self._recover()
            if self.identity is not None:
                self._check_identity()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _check_identity(self) -> None:
        side = identity_path(self.path)
        if self.done and side.is_file():
            try:
                stored = loads_json(read_text(side))
            except JsonError as err:
                raise DataError(f"{side}: not valid JSON ({err}); delete it to adopt this run's setup") from None
            if not isinstance(stored, dict):
                raise DataError(f"{side}: expected a JSON object (the setup its records were distilled with)")
            problem = self.mismatch(stored)
            if problem:
                raise DataError(problem)
            return
        write_json(side, self.identity, sort_keys=True)

    def check_identity(self, identity: dict) -> None:
        """Check (or give a new file) `identity` once the store is open: for writers that learn part of their setup,
        such as the teacher, only after finding that work is left."""
        self.identity = identity
        self._check_identity()

    def mismatch(self, stored: dict) -> str | None:
        """Why the records on disk (written under `stored`) must not be resumed by this run; None: they may."""
        assert self.identity is not None
        return identity_mismatch(self.path, stored, self.identity)

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None

    def _recover(self) -> None:
        """Read the ids already written, then cut off a partial last line. The complete lines are checked first and
        the tail must look like a record cut short ('{...'), so a file that is not a distilled file (a --out
        pointing at the wrong file) is refused untouched rather than truncated."""
        assert self._fh is not None
        data = read_bytes(self.path)
        end = data.rfind(b"\n") + 1  # everything after the last newline is a write cut short by a kill
        for number, record in _records(self.path, data[:end], self.noun):
            if record["id"] in self.done:
                raise DataError(f"{self.path}: line {number}: duplicate id {record['id']!r}")
            self.done.add(record["id"])
            if self.keep_records:
                self.records.append(record)
            if isinstance(record.get("teacher"), str):
                self.teachers.add(record["teacher"])
        if end < len(data):
            tail = data[end:].strip()
            if tail and not tail.startswith(b"{"):
                line = data.count(b"\n") + 1
                raise DataError(
                    f"{self.path}: line {line}: not a {self.noun} record, nor one cut short by a kill; is this a "
                    f"{self.noun} JSONL file? Fix or delete that line"
                )
            self.repaired_bytes = len(data) - end
            self._fh.truncate(end)
            os.fsync(self._fh.fileno())

    def append(self, records: Iterable[dict]) -> int:
        """Write a batch as ONE write, then flush and fsync: after this returns, the batch survives a crash."""
        assert self._fh is not None, "use DistillStore as a context manager"
        fresh, ids = [], set(self.done)
        for record in records:
            if record["id"] not in ids:  # never twice, not even within one batch
                ids.add(record["id"])
                fresh.append(record)
        if not fresh:
            return 0
        append_jsonl(self._fh, fresh)
        self.done.update(r["id"] for r in fresh)
        if self.keep_records:
            self.records.extend(fresh)
        return len(fresh)


def read_distilled(path: str | Path) -> list[dict]:
    """All complete records of a distilled file (a partial last line from a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: distilled file not found; create it with `fslm distill --out {path}`")
    data = read_bytes(path)
    records = []
    for number, record in _records(path, data[: data.rfind(b"\n") + 1]):
        record["_line"] = number
        records.append(record)
    if not records:
        raise DataError(f"{path}: no distilled records in this file")
    return records
