"""File access shared by the loaders: locate files, read records with line numbers, and
turn every problem into a DataError that names the file, the line and what was expected."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fslm.io as fslm_io
from fslm.errors import DataError

HINT = "set FSLM_DATA_DIR to the folder holding the benchmark files (see its README.md)"


def require_dir(data_dir: Path) -> Path:
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; {HINT}")
    return data_dir


def require_file(data_dir: Path, rel: str) -> Path:
    require_dir(data_dir)
    path = data_dir / rel
    if not path.is_file():
        raise DataError(f"missing data file {path}; {HINT}")
    return path


def bad(where: str, expected: str, got: object = None) -> DataError:
    suffix = "" if got is None else f", got {short(got)}"
    return DataError(f"{where}: malformed record: expected {expected}{suffix}")


def short(value: object, limit: int = 80) -> str:
    """A value as an error shows it: a 1 MB field is not repeated back in full."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path) -> str:
    """The file's text (size-capped, strict UTF-8, BOM dropped); see fslm.io."""
    return fslm_io.read_text(path)


def read_lines(path: Path) -> list[str]:
    """Lines without their line ending; a final newline does not make an extra line.

    Splits on "\n" only (and drops a "\r" before it): str.splitlines would also split on
    characters such as U+0085 that occur inside real records (e.g. MMLU management)."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line."""
    malformed = "{path}:{line}: malformed record: expected one JSON object per line ({problem})"
    for lineno, record in fslm_io.iter_jsonl(path, bad_line=malformed):
        if not isinstance(record, dict):
            raise bad(f"{path}:{lineno}", "a JSON object", type(record).__name__)
        yield lineno, record


def field_of(record: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """record[key], checked to exist and be of ``kind`` (non-empty if a str)."""
    if key not in record:
        raise bad(where, f"field {key!r}", f"fields {sorted(record)}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise bad(where, f"field {key!r} of type {name}", value)
    if isinstance(value, str) and not value.strip():
        raise bad(where, f"a non-empty {key!r}", value)
    return value


def iter_csv(path: Path, header: list[str], delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(1-based line where the record starts, fields) for each data row after ``header``.

    ``delimiter="\\t"`` reads plain tab-separated files (no quoting)."""
    text = read_text(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # io.StringIO splits on \n/\r only (not U+0085 etc., which occur inside MMLU fields)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        first = next(reader, None)
        if first != header:
            raise bad(f"{path}:1", f"header {delimiter.join(header)!r}", first)
        start = reader.line_num + 1
        for row in reader:
            if row and any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise bad(f"{path}:{start}", f"{len(header)} fields ({', '.join(header)})", f"{len(row)} fields")
                yield start, row
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
