"""A small quality classifier for instruction data: logistic regression on all-MiniLM-L6-v2 sentence embeddings.

Trained from a file of examples the user labelled good or bad (an Alpaca JSON list or JSONL whose records also have
`label`: "good"/"bad", true/false or 1/0); it gives every record the probability that it is good. A few dozen
labelled examples are enough to learn a direction such as "answers the question" vs "refuses / is off-topic".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fslm.errors import DataError
from fslm.extras import require
from fslm.io import JsonError, decode_text, iter_jsonl, loads_json, read_bytes

GOOD = {"good", "1", "true", "yes"}
BAD = {"bad", "0", "false", "no"}


def record_text(prompt: str, output: str) -> str:
    """What the classifier reads of a record: the request, then the answer."""
    return f"{prompt}\n\n{output}"


def read_labels(path: str | Path) -> tuple[list[str], list[int]]:
    """(texts, labels 1 = good / 0 = bad) of a labelled file; a bad record names its file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found (expected JSONL or a JSON list of labelled records)")
    raw = read_bytes(path)
    text = decode_text(path, raw)
    if text.lstrip().startswith("["):
        try:
            value = loads_json(text)
        except JsonError as err:
            raise DataError(f"{path}: malformed JSON: {err}") from None
        if not isinstance(value, list):
            raise DataError(f"{path}: expected a JSON list of labelled records")
        rows = [(f"record {i + 1}", obj) for i, obj in enumerate(value)]
    else:
        bad = "{path}: line {line}: malformed JSON: {problem}"
        rows = [(f"line {n}", obj) for n, obj in iter_jsonl(path, text=text, bad_line=bad)]
    texts, labels = [], []
    for where, obj in rows:
        texts.append(_text(path, where, obj))
        labels.append(_label(path, where, obj))
    for wanted, name in ((1, "good"), (0, "bad")):
        if wanted not in labels:
            raise DataError(f"{path}: no {name} examples; the classifier needs at least one good and one bad record")
    return texts, labels


def _text(path: Path, where: str, obj: Any) -> str:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where}: expected a JSON object with instruction, output and label")
    parts = []
    for name, required in (("instruction", True), ("input", False), ("output", True)):
        value = obj.get(name)
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            raise DataError(f"{path}: {where}: field {name!r} must be a non-empty string")
        parts.append(value.strip())
    return record_text("\n\n".join(p for p in parts[:-1] if p), parts[-1])


def _label(path: Path, where: str, obj: dict) -> int:
    value = obj.get("label")
    key = str(value).strip().lower() if isinstance(value, (str, bool, int)) else None
    if key in GOOD:
        return 1
    if key in BAD:
        return 0
    raise DataError(f"{path}: {where}: field 'label' must be good or bad (or true/false, 1/0), got {value!r}")


@dataclass
class QualityClassifier:
    model: Any  # sklearn LogisticRegression
    digest: str  # sha256 of the labels file: scores made with another file must not be mixed in
    n_good: int
    n_bad: int

    @classmethod
    def train(cls, labels: str | Path, *, c: float = 1.0) -> QualityClassifier:
        texts, y = read_labels(labels)
        require("collaborate", "the quality classifier (--labels)")
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=c, max_iter=1000, class_weight="balanced")
        model.fit(embed(texts), y)
        return cls(model, labels_digest(labels), sum(y), len(y) - sum(y))

    def predict(self, texts: Sequence[str]) -> list[float]:
        """P(good) of each text."""
        return [float(p) for p in self.model.predict_proba(embed(texts))[:, 1]]


def labels_digest(path: str | Path) -> str:
    """Which labels file trained a classifier (validated here, so a bad file fails before any model loads)."""
    read_labels(path)
    return hashlib.sha256(read_bytes(path)).hexdigest()[:16]


def embed(texts: Sequence[str]):
    from fslm.models.embedder import sentence_encoder

    return sentence_encoder().encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
