"""The `alpaca` generation task: instruction following scored against the reference outputs of the shared Alpaca sample.

Its test split is the TAIL of `alpaca/random_9k.json`: the last `ALPACA_TEST_TAIL` unique records, in file order
(a record without an output is left out, so there may be fewer items). Training code that reads that file must stay
on its head, the first `alpaca_head_size()` unique records (`load_instructions(limit=alpaca_head_size())`);
`training_overlap` says when a reader would reach the tail.
"""

from __future__ import annotations

from pathlib import Path

from fslm.errors import DataError
from fslm.tasks.base import Item
from fslm.tasks.instructions import DEFAULT_DATA, Instruction, default_data_path, load_instructions
from fslm.tasks.readers import require_file

ALPACA_TEST_TAIL = 500  # the last N unique records of the Alpaca sample are evaluated, never trained on


def alpaca_records(path: str | Path | None = None) -> list[Instruction]:
    """Every unique record of the Alpaca file (default: the shared sample), in file order."""
    return load_instructions(path)[0]


def alpaca_head_size(path: str | Path | None = None) -> int:
    """How many unique records, from the start of the file, training may read: all but the evaluated tail."""
    return max(0, len(alpaca_records(path)) - ALPACA_TEST_TAIL)


def load_alpaca(task: str, data_dir: Path, split: str) -> list[Item]:
    """The tail records as generation items: question = the record's prompt (instruction, then its input block),
    gold = its output (also the reference text of the text metrics)."""
    path = require_file(data_dir, DEFAULT_DATA)
    items = []
    for rec in alpaca_records(path)[-ALPACA_TEST_TAIL:]:
        if rec.gold is None:
            continue  # nothing to compare a generation with
        items.append(
            Item(
                id=f"{task}/{rec.id}",  # == its retrieval passage id (fslm.retrieve.corpus): a stack's index leak is seen
                task=task,
                question=rec.prompt,
                choices=(),
                gold=rec.gold,
                context=f"{rec.prompt}\n\nResponse:",  # what a raw answer format continues
                continuations=(),
                meta={"source": f"{DEFAULT_DATA}: record {rec.index + 1}"},
            )
        )
    return items


def training_overlap(path: str | Path | None, limit: int | None) -> str | None:
    """Why training on the first `limit` unique records of `path` (None: the shared sample; limit None: all of it)
    would read items the alpaca task evaluates, or None when it would not (another file, or a limit within the head).
    A missing default file is left to the evaluation to report."""
    default = default_data_path()
    if path is not None and Path(path).resolve() != default.resolve():
        return None
    try:
        head = alpaca_head_size(default)
    except DataError:
        head = None
    if limit is not None and (head is None or limit <= head):
        return None
    fix = f"set limit to at most {head}" if head is not None else "set a limit that stops before them"
    reads = "every record" if limit is None else f"the first {limit} records"
    return (
        f"reads {reads} of {DEFAULT_DATA}, and the evaluation's alpaca task scores its last {ALPACA_TEST_TAIL} "
        f"unique records: training would see evaluated items; {fix}"
    )
