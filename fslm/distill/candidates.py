"""The records `fslm curate` ranks: Alpaca records or the records `fslm distill` kept, each with one id and text.

Shared by the scorer (fslm.distill.curate) and the judge (fslm.distill.judge), which both read the same candidates
and draw seeded samples from them in an order that does not depend on file order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fslm.distill.store import read_distilled
from fslm.errors import DataError
from fslm.io import JsonError, decode_text, loads_json, read_bytes
from fslm.tasks.instructions import load_instructions


@dataclass(frozen=True)
class Candidate:
    id: str
    index: int  # position in the input file
    prompt: str
    output: str
    raw: dict  # the record exactly as read, written back unchanged when kept


def read_candidates(path: str | Path) -> tuple[str, list[Candidate], int, int]:
    """(format, candidates, duplicates, unusable distilled records) of an Alpaca file or a distilled JSONL; format is
    "json" (an Alpaca JSON list), "jsonl" (Alpaca JSONL) or "distilled", and the kept records are written back in it.

    A distilled record's text is its prompt and the stage targets in stage order; only records distill kept count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found (expected Alpaca JSON/JSONL or a distilled JSONL)")
    text = decode_text(path, read_bytes(path))
    if _first_object(text).get("targets") is not None:
        return _distilled(path)
    items, duplicates = load_instructions(path)
    if text.lstrip().startswith("["):
        fmt, raw = "json", loads_json(text)
    else:
        fmt, raw = "jsonl", [loads_json(line) for line in text.split("\n") if line.strip()]
    out = [Candidate(it.id, it.index, it.prompt, it.output or "", raw[it.index]) for it in items]
    return fmt, out, duplicates, 0


def _first_object(text: str) -> dict:
    """The first line as a JSON object when the file is JSONL starting with one, else {} (let the reader complain)."""
    first = text.lstrip().split("\n", 1)[0]
    if not first.startswith("{"):
        return {}
    try:
        value = loads_json(first)
    except JsonError:
        return {}
    return value if isinstance(value, dict) else {}


def _distilled(path: Path) -> tuple[str, list[Candidate], int, int]:
    out, unusable = [], 0
    for index, rec in enumerate(read_distilled(path)):
        line = rec.pop("_line")
        targets = rec.get("targets")
        if not isinstance(targets, dict) or not all(isinstance(t, str) for t in targets.values()):
            raise DataError(f"{path}: line {line}: field 'targets' must be an object of stage name -> text")
        if not isinstance(rec.get("prompt"), str):
            raise DataError(f"{path}: line {line}: field 'prompt' must be a string")
        if not rec.get("kept"):
            unusable += 1
            continue
        out.append(Candidate(rec["id"], index, rec["prompt"], "\n\n".join(targets.values()), rec))
    return "distilled", out, 0, unusable


def random_key(seed: int, record_id: str) -> int:
    """A record's place in the random order of `seed`: independent of file order and of the other records."""
    return int(hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()[:16], 16)
