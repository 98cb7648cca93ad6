"""A run folder on disk: resumable per-item rows and the run's identity.

`items.jsonl` is appended one batch at a time (one write + fsync), so a killed run loses at most the batch in
flight; a torn last line is cut off on resume. A finished run can be compressed (`compress_run`): its rows move to
`items.jsonl.gz`, byte for byte, and every reader here reads that file first, then any rows appended since to
`items.jsonl` (a resumed run never rewrites the compressed file). `run.json` records what was evaluated (system, few-shot, split,
prompt convention) so a rerun into the same folder continues that run and refuses to mix in another one. A signals
file (`fslm cascade signals`) holds per-item values in [0, 1] for a run's rows, keyed by (task, id).
"""

from __future__ import annotations

import fcntl
import gzip
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from fslm.errors import DataError, InputError
from fslm.io import append_jsonl, atomic_file, iter_jsonl, loads_json, read_bytes, read_json_object, write_json

ITEMS = "items.jsonl"
ITEMS_GZ = ITEMS + ".gz"
RUN = "run.json"
LOCK = ".lock"


class RunFolderBusy(InputError):
    """Another process holds the run folder's lock: wait for it (or pick another folder) instead of writing beside it."""


def folder_busy(folder: Path) -> bool:
    """Whether another process is writing this run folder right now (its lock is held); never creates the folder."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return False
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False


def has_items(folder: Path) -> bool:
    """Whether a run folder holds per-item rows (plain, compressed or both)."""
    return (Path(folder) / ITEMS).is_file() or (Path(folder) / ITEMS_GZ).is_file()


def items_bytes(run: str | Path) -> tuple[Path, bytes]:
    """(the file to name in messages, the per-item JSONL bytes) of a run folder, or of one items file given directly
    (`.gz` decompressed): the compressed rows, then the rows appended after compression. The bytes equal what the
    uncompressed items.jsonl held, so digests of them survive `compress_run`."""
    path = Path(run)
    if not path.is_dir():
        return path, read_bytes(path)
    plain, packed = path / ITEMS, path / ITEMS_GZ
    data = read_bytes(packed) if packed.is_file() else b""
    if data and not data.endswith(b"\n"):
        raise DataError(
            f"{packed}: its last row is cut short; restore the file (compressed rows are never appended to)"
        )
    if plain.is_file():
        data += read_bytes(plain)
    return (plain if plain.is_file() or not packed.is_file() else packed), data


def read_rows(folder: Path) -> dict[str, dict]:
    """A run folder's rows by id, read-only and without its lock, so it works beside a run being written: a torn
    final line (the batch in flight) is skipped; a malformed line elsewhere names the file and line."""
    folder = Path(folder)
    if not has_items(folder):
        return {}
    path, data = items_bytes(folder)
    lines = data.split(b"\n")  # bytes: the torn tail may end inside a UTF-8 character
    rows: dict[str, dict] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = _parse_row(line)
        except ValueError as err:
            if lineno == len(lines):
                break
            raise DataError(f"{path}:{lineno}: malformed row ({err}); fix or delete that line") from None
        rows[str(row["id"])] = row
    return rows


def compress_run(folder: str | Path) -> Path:
    """Move a run folder's rows into `items.jsonl.gz` (deterministic gzip: same rows, same bytes), holding the
    folder's lock so no evaluation appends meanwhile; the plain file is removed only after the compressed one is
    complete on disk. For committed results: per-item outputs stay readable by every fslm reader at a quarter of
    the size. Returns the compressed file."""
    folder = Path(folder)
    if not has_items(folder):
        raise InputError(f"{folder}: no {ITEMS} here; give a folder written by `fslm eval --out DIR`")
    with open(folder / LOCK, "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{folder}: an evaluation is writing this run folder; compress it when that ends"
            ) from None
        packed = folder / ITEMS_GZ
        if not (folder / ITEMS).is_file():
            return packed
        _, data = items_bytes(folder)
        complete = data[: data.rfind(b"\n") + 1]  # a torn tail from a killed run is not a row: left out
        with atomic_file(packed) as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(complete)
        os.chmod(packed, 0o644)
        (folder / ITEMS).unlink()
    return packed


def _parse_row(line: bytes) -> dict:
    """One items.jsonl line as a row; ValueError saying why not (not UTF-8, not JSON, not an object with an id), so
    that readers can tell a torn last line from damage."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text at byte {err.start + 1}") from None
    row = loads_json(text)  # JsonError is a ValueError
    if not isinstance(row, dict) or "id" not in row:
        raise ValueError("expected a JSON object with an 'id'")
    return row


class RunStore:
    """Rows of one run, in memory and (when `folder` is set) in `folder/items.jsonl`.

    A folder is written by one process at a time: opening it takes an exclusive lock (`folder/.lock`, released by
    `close()` or when the process dies), so two evaluations can never interleave rows in one items.jsonl.
    """

    def __init__(self, folder: Path | None, identity: Mapping[str, object]):
        self.folder = Path(folder) if folder is not None else None
        self.identity = dict(identity)
        self.rows: dict[str, dict] = {}
        self.meta: dict = {"identity": self.identity, "sessions": []}
        self._lock_fh = None
        if self.folder is not None:
            self._open()

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()  # closing releases the lock
            self._lock_fh = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self) -> None:
        assert self.folder is not None
        fh = open(self.folder / LOCK, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RunFolderBusy(
                f"{self.folder}: another evaluation is writing this run folder; wait for it to finish "
                "(or stop it) or pass another --out"
            ) from None
        self._lock_fh = fh

    @property
    def items_path(self) -> Path:
        assert self.folder is not None
        return self.folder / ITEMS

    def _open(self) -> None:
        assert self.folder is not None
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--out {self.folder} is a file; give a folder for the run's outputs")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._read_existing()
        except BaseException:
            self.close()
            raise

    def _read_existing(self) -> None:
        assert self.folder is not None
        run_path = self.folder / RUN
        if run_path.is_file():
            meta = read_json_object(run_path)
            if not isinstance(meta.get("identity", {}), dict) or not isinstance(meta.get("sessions", []), list):
                raise DataError(f"{run_path}: malformed identity or sessions; fix it or use another --out")
            old = meta.get("identity", {})
            diff = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
            if diff:
                details = "; ".join(f"{k}: {old.get(k)!r} there, {self.identity.get(k)!r} now" for k in diff)
                raise InputError(
                    f"{self.folder} holds a different run ({details}); pass another --out folder or delete it to start over"
                )
            self.meta = meta
        elif has_items(self.folder):
            raise InputError(f"{self.folder} has {ITEMS} but no {RUN}; it is not an fslm eval run folder I can resume")
        write_json(run_path, self.meta)
        self._load_rows()

    def _load_rows(self) -> None:
        assert self.folder is not None
        if (self.folder / ITEMS_GZ).is_file():  # compressed rows: complete by construction, read but never rewritten
            packed, data = items_bytes(self.folder / ITEMS_GZ)
            for lineno, line in enumerate(data.split(b"\n"), 1):
                if line.strip():
                    try:
                        row = _parse_row(line)
                    except ValueError as err:
                        raise DataError(f"{packed}:{lineno}: malformed row ({err}); restore the file") from None
                    self.rows[row["id"]] = row
        path = self.items_path
        if not path.is_file():
            return
        lines = read_bytes(path).split(b"\n")
        offset = 0
        for lineno, line in enumerate(lines, 1):
            is_last = lineno == len(lines)  # after a final newline this is b""
            if line.strip():
                try:
                    row = _parse_row(line)
                except ValueError as err:
                    if not is_last:
                        raise DataError(
                            f"{path}:{lineno}: malformed row ({err}); fix or delete that line to resume"
                        ) from None
                    with path.open("r+b") as fh:  # a torn final write from a killed run: drop it
                        fh.truncate(offset)
                    break
                self.rows[row["id"]] = row
                if is_last:  # complete but unterminated: terminate it so the next append starts a new line
                    with path.open("ab") as fh:
                        fh.write(b"\n")
            offset += len(line) + 1

    def done(self) -> set[str]:
        return set(self.rows)

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        for row in rows:
            self.rows[row["id"]] = row
        if self.folder is None or not rows:
            return
        append_jsonl(self.items_path, rows)

    def add_session(self, session: Mapping[str, object]) -> None:
        """Start a session entry; `update_session` refreshes it after every batch, so a killed run keeps its costs."""
        self.meta.setdefault("sessions", []).append(dict(session))
        self._save_meta()

    def update_session(self, fields: Mapping[str, object]) -> None:
        self.meta["sessions"][-1].update(fields)
        self._save_meta()

    def _save_meta(self) -> None:
        if self.folder is not None:
            write_json(self.folder / RUN, self.meta)

    @property
    def sessions(self) -> list[dict]:
        return list(self.meta.get("sessions", []))


def read_signals(
    path: str | Path,
) -> tuple[dict[str, dict[tuple[str, str], float]], dict[str, dict[tuple[str, str], float]]]:
    """A signals JSONL as ({signal: {(task, id): value}}, {"<signal>_<unit>": {(task, id): cost}}).

    Rows look like {"task", "id", "verify": 0.83, "verify_flops": 1.2e10, "verify_seconds": 0.05}.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: signals file not found (write one with `fslm cascade signals`)")
    values: dict[str, dict[tuple[str, str], float]] = {}
    costs: dict[str, dict[tuple[str, str], float]] = {}
    expected = "{path}:{line}: expected a JSON object with 'task', 'id' and signal values"
    for lineno, row in iter_jsonl(path, bad_line=expected + " ({problem})"):
        try:
            key = (row["task"], row["id"])
        except (KeyError, TypeError):
            raise DataError(expected.format(path=path, line=lineno)) from None
        for name, value in row.items():
            if name in ("task", "id") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if name.endswith(("_flops", "_seconds")):
                costs.setdefault(name, {})[key] = float(value)
                continue
            if not 0.0 <= value <= 1.0:
                raise DataError(f"{path}:{lineno}: signal {name!r} = {value} is outside [0, 1]")
            values.setdefault(name, {})[key] = float(value)
    return values, costs
