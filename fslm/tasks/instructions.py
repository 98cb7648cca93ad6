"""Alpaca-format instruction data (a JSON list or JSONL of {instruction, input, output}), validated record by record.

Every error names the file, the record number and its line, so a broken row in a 9k-record file is found at once.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from fslm.errors import DataError
from fslm.io import JsonError, decode_json_at, decode_text, iter_jsonl, read_bytes
from fslm.settings import get_settings

DEFAULT_DATA = "alpaca/random_9k.json"
# Alpaca's "<noinput>", "Noinput", "No input.". Written `no\s*(?:-\s*)?input`, not `no\s*-?\s*input`: two
# adjacent \s* made a long run of spaces backtrack quadratically (6 s for 40k spaces).
NO_INPUT = re.compile(r"^<?\s*no\s*(?:-\s*)?input\s*>?\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    id: str
    index: int  # position in the file (0-based)
    instruction: str
    input: str
    output: str | None  # the gold answer; None or "" means no hint is available

    @property
    def prompt(self) -> str:
        """What the stack is asked: the instruction, then the input block when there is one."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    @property
    def gold(self) -> str | None:
        return self.output if self.output and self.output.strip() else None


def default_data_path() -> Path:
    return get_settings().data_dir / DEFAULT_DATA


def _decode(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: data file not found (expected an Alpaca JSON list or JSONL file)")
    text = decode_text(path, read_bytes(path))
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a JSON list or JSONL of {{instruction, input, output}} records")
    return text


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_list(path: Path, text: str) -> list[tuple[int, object]]:
    """Parse `[obj, obj, ...]` element by element, keeping each element's line for error messages."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, object]] = []
    pos = text.index("[") + 1
    line, counted = 1, 0  # line number of `counted`, advanced incrementally (a full recount per record is O(n^2))

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == "]":
            break
        if items:
            if pos >= len(text) or text[pos] != ",":
                raise DataError(f"{path}: line {_line_of(text, pos)}: expected ',' or ']' after record {len(items)}")
            pos += 1
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
        try:
            obj, end = decode_json_at(decoder, text, pos)
        except JsonError as err:
            raise DataError(f"{path}: record {len(items) + 1} (line {line_at(pos)}): malformed JSON: {err}") from None
        items.append((line_at(pos), obj))
        pos = end
    if text[pos + 1 :].strip():
        raise DataError(f"{path}: line {_line_of(text, pos + 1)}: unexpected text after the closing ']'")
    return items


def _jsonl(path: Path, text: str) -> list[tuple[int, object]]:
    return list(iter_jsonl(path, text=text, bad_line="{path}: line {line}: malformed JSON: {problem}"))


def _field(where: str, obj: dict, name: str, required: bool) -> str | None:
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(
                f"{where}: missing required field {name!r} (an Alpaca record needs instruction, optional input and output)"
            )
        return None
    value = obj[name]
    if not isinstance(value, str):
        shown = f" {json.dumps(value)[:60]}" if isinstance(value, (int, float)) else ""
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}{shown}")
    return value


def record_id(obj: dict, instruction: str, input_: str, output: str | None) -> str:
    """The record's own `id` when it has one, else a content hash (stable when the file is re-ordered)."""
    if obj.get("id") is not None:
        return str(obj["id"])
    digest = hashlib.sha1("\x00".join([instruction, input_, output or ""]).encode("utf-8")).hexdigest()
    return f"a{digest[:16]}"


def load_instructions(path: str | Path | None = None, limit: int | None = None) -> tuple[list[Instruction], int]:
    """Read and validate an Alpaca file; returns (unique records, number of duplicate records dropped)."""
    path = Path(path) if path is not None else default_data_path()
    text = _decode(path)
    is_list = text.lstrip().startswith("[")
    raw = _json_list(path, text) if is_list else _jsonl(path, text)
    if not raw:
        raise DataError(
            f"{path}: no records found; expected a JSON list or JSONL of {{instruction, input, output}} records"
        )
    records: list[Instruction] = []
    seen: set[str] = set()
    duplicates = 0
    for index, (line, obj) in enumerate(raw):
        where = f"{path}: record {index + 1} (line {line})"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with instruction/input/output, got {type(obj).__name__}")
        instruction = _field(where, obj, "instruction", True)
        assert instruction is not None
        if not instruction.strip():
            raise DataError(f"{where}: field 'instruction' is empty")
        input_ = (_field(where, obj, "input", False) or "").strip()
        input_ = "" if NO_INPUT.match(input_) else input_
        output = _field(where, obj, "output", False)
        if "id" in obj and (not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool)):
            raise DataError(f"{where}: field 'id' must be a string or integer, got {type(obj['id']).__name__}")
        rid = record_id(obj, instruction.strip(), input_, output.strip() if output else None)
        if rid in seen:
            duplicates += 1
            continue
        seen.add(rid)
        records.append(
            Instruction(rid, index, instruction.strip(), input_, output.strip() if output is not None else None)
        )
        if limit is not None and len(records) >= limit:
            break
    return records, duplicates
