"""Loaders for the JSON-lines benchmarks: ARC (AI2 original and MosaicML converted),
BoolQ (MosaicML converted), PIQA (jsonl + labels file), WinoGrande and GSM8K.

Each loader takes (task name, data dir, split) and returns items in file order."""

from __future__ import annotations

from pathlib import Path

from fslm.errors import DataError
from fslm.tasks.base import Item
from fslm.tasks.readers import bad, field_of, iter_jsonl, read_lines, require_file, short


def _src(path: Path, data_dir: Path, lineno: int) -> str:
    return f"{path.relative_to(data_dir)}:{lineno}"


def _arc_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


# --- ARC-Challenge: original AI2 jsonl --------------------------------------------------

ARC_CHALLENGE_FILES = {
    "test": "arc_challenge/ARC-Challenge-Test.jsonl",
    "validation": "arc_challenge/ARC-Challenge-Dev.jsonl",
}


def load_arc_challenge(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, ARC_CHALLENGE_FILES[split])
    items = []
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        q = field_of(rec, "question", where, dict)
        stem = field_of(q, "stem", where)
        raw_choices = field_of(q, "choices", where, list)
        labels, texts = [], []
        for ch in raw_choices:
            if not isinstance(ch, dict) or not isinstance(ch.get("label"), str) or not isinstance(ch.get("text"), str):
                raise bad(where, "question.choices as a list of {text, label} objects", ch)
            labels.append(ch["label"])
            texts.append(ch["text"])
        key = field_of(rec, "answerKey", where)
        if len(texts) < 2 or key not in labels:
            raise bad(where, f"answerKey among the choice labels {short(labels)}", key)
        items.append(
            Item(
                id=f"{task}/{field_of(rec, 'id', where)}",
                task=task,
                question=stem,
                choices=tuple(texts),
                gold=labels.index(key),
                context=_arc_context(stem),
                continuations=tuple(" " + t for t in texts),
                meta={"source": _src(path, data_dir, lineno), "labels": "".join(labels)},
            )
        )
    return items


# --- MosaicML converted layout (query / choices / gold): ARC-Easy and BoolQ ------------

ARC_EASY_FILES = {"test": "arc_easy/arc_easy.jsonl"}
BOOLQ_FILES = {"validation": "boolq/boolq.jsonl"}


def _mosaic_record(rec: dict, where: str, n_choices: int | None = None) -> tuple[str, list[str], int]:
    query = field_of(rec, "query", where)
    choices = field_of(rec, "choices", where, list)
    if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise bad(where, "'choices' as a list of at least 2 non-empty strings", choices)
    if n_choices is not None and len(choices) != n_choices:
        raise bad(where, f"{n_choices} choices", choices)
    gold = field_of(rec, "gold", where, int)
    if not 0 <= gold < len(choices):
        raise bad(where, f"'gold' between 0 and {len(choices) - 1}", gold)
    return query, choices, gold


def load_arc_easy(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, ARC_EASY_FILES[split])
    items = []
    for idx, (lineno, rec) in enumerate(iter_jsonl(path)):
        where = f"{path}:{lineno}"
        query, choices, gold = _mosaic_record(rec, where)
        question = query.removesuffix("\nAnswer:").removeprefix("Question:").strip()
        if not question:
            raise bad(where, "'query' of the form 'Question: ...'", query)
        items.append(
            Item(
                id=f"{task}/{split}/{idx}",
                task=task,
                question=question,
                choices=tuple(choices),
                gold=gold,
                context=_arc_context(question),
                continuations=tuple(" " + c for c in choices),
                meta={"source": _src(path, data_dir, lineno)},
            )
        )
    return items


def load_boolq(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, BOOLQ_FILES[split])
    items = []
    for idx, (lineno, rec) in enumerate(iter_jsonl(path)):
        where = f"{path}:{lineno}"
        query, choices, gold = _mosaic_record(rec, where, n_choices=2)
        if [c.strip().lower() for c in choices] != ["no", "yes"]:
            raise bad(where, "choices ['no', 'yes']", choices)
        body = query.removeprefix("Passage:").strip()
        passage, sep, question = body.rpartition("\nQuestion:")
        passage, question = passage.strip(), question.strip()
        if not sep or not passage or not question:
            raise bad(where, "'query' of the form 'Passage: ...\\nQuestion: ...'", query)
        if not question.endswith("?"):
            question += "?"
        items.append(
            Item(
                id=f"{task}/{split}/{idx}",
                task=task,
                question=f"{passage}\n{question}",
                choices=("no", "yes"),
                gold=gold,
                context=f"{passage}\nQuestion: {question}\nAnswer:",
                continuations=(" no", " yes"),
                meta={"source": _src(path, data_dir, lineno), "passage": passage, "query": question},
            )
        )
    return items


# --- PIQA: jsonl + line-aligned labels file ---------------------------------------------

PIQA_FILES = {"validation": ("piqa/valid.jsonl", "piqa/valid-labels.lst")}


def load_piqa(task: str, data_dir: Path, split: str) -> list[Item]:
    rel_data, rel_labels = PIQA_FILES[split]
    path, labels_path = require_file(data_dir, rel_data), require_file(data_dir, rel_labels)
    labels = read_lines(labels_path)
    records = list(iter_jsonl(path))
    while labels and not labels[-1].strip():
        labels.pop()
    if len(labels) != len(records):
        raise DataError(
            f"{labels_path}: expected one label per record of {path} ({len(records)} records), got {len(labels)} labels"
        )
    items = []
    for idx, ((lineno, rec), label) in enumerate(zip(records, labels, strict=True)):
        where = f"{path}:{lineno}"
        if label.strip() not in ("0", "1"):
            raise bad(f"{labels_path}:{idx + 1}", "label 0 or 1", label)
        goal = field_of(rec, "goal", where)
        sols = (field_of(rec, "sol1", where), field_of(rec, "sol2", where))
        items.append(
            Item(
                id=f"{task}/{split}/{idx}",
                task=task,
                question=goal,
                choices=sols,
                gold=int(label.strip()),  # strip() drops \x1c-\x1f too; int() does not
                context=f"Question: {goal}\nAnswer:",
                continuations=tuple(" " + s for s in sols),
                meta={"source": _src(path, data_dir, lineno)},
            )
        )
    return items


# --- WinoGrande: partial evaluation (per-choice contexts) -------------------------------

WINOGRANDE_FILES = {"validation": "winogrande/dev.jsonl"}


def load_winogrande(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, WINOGRANDE_FILES[split])
    items = []
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        sentence = field_of(rec, "sentence", where)
        if "_" not in sentence:
            raise bad(where, "a 'sentence' containing the blank '_'", sentence)
        options = (field_of(rec, "option1", where), field_of(rec, "option2", where))
        answer = field_of(rec, "answer", where)
        if answer not in ("1", "2"):
            raise bad(where, "'answer' '1' or '2'", answer)
        blank = sentence.index("_")
        prefix, rest = sentence[:blank], sentence[blank + 1 :].strip()
        items.append(
            Item(
                id=f"{task}/{field_of(rec, 'qID', where)}",
                task=task,
                question=sentence,
                choices=options,
                gold=int(answer) - 1,
                context=prefix.rstrip(),  # answer-blind shared prefix; score with contexts[i]
                continuations=(" " + rest, " " + rest),
                meta={"source": _src(path, data_dir, lineno)},
                contexts=tuple(prefix + opt for opt in options),
            )
        )
    return items


# --- GSM8K: generation ------------------------------------------------------------------

GSM8K_FILES = {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}


def load_gsm8k(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, GSM8K_FILES[split])
    items = []
    for idx, (lineno, rec) in enumerate(iter_jsonl(path)):
        where = f"{path}:{lineno}"
        question = field_of(rec, "question", where)
        solution = field_of(rec, "answer", where)
        final = solution.rsplit("####", 1)[1].replace(",", "").strip() if "####" in solution else ""
        if not final:
            raise bad(where, "an 'answer' ending in '#### <number>'", solution[-60:])
        items.append(
            Item(
                id=f"{task}/{split}/{idx}",
                task=task,
                question=question,
                choices=(),
                gold=final,
                context=f"Question: {question}\nAnswer:",
                continuations=(),
                meta={"source": _src(path, data_dir, lineno), "solution": solution},
            )
        )
    return items
