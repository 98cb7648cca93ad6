"""Loaders for the non-jsonl benchmarks: HellaSwag (llama.cpp 6-line text blocks),
OpenBookQA (TSV), MMLU (one CSV per subject) and TruthfulQA (mc_task.json list)."""

from __future__ import annotations

import re
from pathlib import Path

from fslm.errors import DataError
from fslm.io import JsonError, loads_json
from fslm.tasks.base import Item
from fslm.tasks.readers import bad, iter_csv, read_lines, read_text, require_dir, require_file

# --- HellaSwag ----------------------------------------------------------------------------

HELLASWAG_FILES = {"validation": "hellaswag/hellaswag_val_full.txt"}
_SENTENCE_END = re.compile(r"[.!?]\s+")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup (drop WikiHow [bracket] markers, collapse double spaces).

    The vendored text already had most markers removed; running it again is harmless and
    also removes the few remaining ``[...]`` spans the way lm-eval does."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = "\n".join(_drop_brackets(line) for line in text.split("\n"))
    return text.replace("  ", " ")


def _drop_brackets(line: str) -> str:
    """``re.sub(r"\\[.*?\\]", "", line)`` in linear time: that regex rescans the rest of the line from every "["
    without a closing "]", so a line of 40k "[" took seconds and a 1 MB one hours."""
    out, pos = [], 0
    while (start := line.find("[", pos)) >= 0 and (end := line.find("]", start)) >= 0:
        out.append(line[pos:start])
        pos = end + 1
    out.append(line[pos:])
    return "".join(out)


def _capitalize_ctx_b(ctx: str) -> str:
    """lm-eval builds ``ctx_a + " " + ctx_b.capitalize()``; the text file only has the joined
    ``ctx`` with ctx_b in lower case. ctx_b is the trailing sentence fragment, so when the
    context does not end a sentence, upper-case the first letter after the last sentence end."""
    if not ctx or ctx.endswith((".", "!", "?")):
        return ctx  # ctx_b is empty (typical for WikiHow items)
    start = 0
    for m in _SENTENCE_END.finditer(ctx):
        start = m.end()
    return ctx[:start] + ctx[start : start + 1].upper() + ctx[start + 1 :]


def load_hellaswag(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, HELLASWAG_FILES[split])
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise DataError(
            f"{path}:{len(lines)}: malformed record: expected 6-line blocks (context, label 0-3, 4 endings), "
            f"got {len(lines)} lines (not a multiple of 6)"
        )
    items = []
    for idx, start in enumerate(range(0, len(lines), 6)):
        head, label, *endings = lines[start : start + 6]
        activity, sep, ctx = head.partition(": ")
        if not sep or not activity.strip():
            raise bad(f"{path}:{start + 1}", "a context line 'activity label: context'", head)
        if label.strip() not in ("0", "1", "2", "3"):
            raise bad(f"{path}:{start + 2}", "a gold label 0-3", label)
        for off, ending in enumerate(endings):
            if not ending.strip():
                raise bad(f"{path}:{start + 3 + off}", "a non-empty ending", ending)
        query = hellaswag_preprocess(f"{activity}: {_capitalize_ctx_b(ctx)}")
        choices = tuple(hellaswag_preprocess(e) for e in endings)
        items.append(
            Item(
                id=f"{task}/{split}/{idx}",
                task=task,
                question=query,
                choices=choices,
                gold=int(label.strip()),  # strip() drops \x1c-\x1f too; int() does not
                context=query,
                continuations=tuple(" " + c for c in choices),
                meta={"source": f"{path.relative_to(data_dir)}:{start + 1}", "activity_label": activity},
            )
        )
    return items


# --- OpenBookQA ---------------------------------------------------------------------------

OPENBOOKQA_FILES = {
    "test": "openbookqa/test.tsv",
    "validation": "openbookqa/dev.tsv",
    "train": "openbookqa/train.tsv",
}
OPENBOOKQA_HEADER = ["ID", "Question Stem", "Choices", "Complete Question", "Answer Key"]


def split_obqa_choices(text: str) -> tuple[str, str, str, str] | None:
    """'(A) .. (B) .. (C) .. (D) ..' split at the first " (B) ", then the first " (C) " and " (D) " after it; D takes
    the rest (one train record repeats "(D)"). The same split as fullmatch of
    ``\\(A\\) (.*?) \\(B\\) (.*?) \\(C\\) (.*?) \\(D\\) (.*)`` (re.S), but linear: that regex backtracked
    cubically, 14 s on a 12 KB line with no "(D)"."""
    if not text.startswith("(A) "):
        return None
    parts, pos = [], 4
    for label in "BCD":
        end = text.find(f" ({label}) ", pos)
        if end < 0:
            return None
        parts.append(text[pos:end])
        pos = end + 5
    return parts[0], parts[1], parts[2], text[pos:]


def load_openbookqa(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, OPENBOOKQA_FILES[split])
    items = []
    for lineno, (qid, stem, choice_str, _complete, key) in iter_csv(path, OPENBOOKQA_HEADER, delimiter="\t"):
        where = f"{path}:{lineno}"
        groups = split_obqa_choices(choice_str.strip())
        if groups is None or not all(c.strip() for c in groups):
            raise bad(where, "Choices '(A) .. (B) .. (C) .. (D) ..'", choice_str)
        key = key.strip()
        if key not in ("A", "B", "C", "D") or not qid.strip() or not stem.strip():
            raise bad(where, "an ID, a question stem and an Answer Key A-D", [qid, stem, key])
        choices = tuple(c.strip() for c in groups)
        items.append(
            Item(
                id=f"{task}/{qid.strip()}",
                task=task,
                question=stem,
                choices=choices,
                gold="ABCD".index(key),
                context=stem,
                continuations=tuple(" " + c for c in choices),
                meta={"source": f"{path.relative_to(data_dir)}:{lineno}"},
            )
        )
    return items


# --- MMLU ---------------------------------------------------------------------------------

MMLU_DIRS = {"test": "mmlu/test", "dev": "mmlu/dev"}
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
LETTERS = ("A", "B", "C", "D")


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def load_mmlu(task: str, data_dir: Path, split: str) -> list[Item]:
    folder = require_dir(data_dir) / MMLU_DIRS[split]
    suffix = f"_{split}.csv"
    files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
    if not files:
        require_file(data_dir, f"{MMLU_DIRS[split]}/abstract_algebra{suffix}")  # raises the usual message
    items = []
    for path in files:
        subject = path.name.removesuffix(suffix)
        desc = mmlu_description(subject)
        for idx, (lineno, row) in enumerate(iter_csv(path, MMLU_HEADER)):
            question, choices, answer = row[0].strip(), tuple(row[1:5]), row[5].strip()
            if answer not in ("0", "1", "2", "3") or not question:
                raise bad(f"{path}:{lineno}", "a question and an 'answer' index 0-3", row)
            body = question + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)) + "\nAnswer:"
            items.append(
                Item(
                    id=f"{task}/{split}/{subject}/{idx}",
                    task=task,
                    question=question,
                    choices=choices,
                    gold=int(answer),
                    context=desc + body,
                    continuations=tuple(" " + letter for letter in LETTERS),
                    meta={"source": f"{path.relative_to(data_dir)}:{lineno}", "subject": subject, "description": desc},
                )
            )
    return items


# --- TruthfulQA (mc1 / mc2 from the same file) --------------------------------------------

TRUTHFULQA_FILES = {"validation": "truthfulqa/mc_task.json"}

# lm-eval's fixed 6-shot QA primer (from the TruthfulQA paper), prepended to every question.
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _pairs(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return pairs  # keep JSON objects as ordered pair lists (answer order matters, duplicates visible)


def load_truthfulqa(task: str, data_dir: Path, split: str) -> list[Item]:
    path = require_file(data_dir, TRUTHFULQA_FILES[split])
    targets_key = "mc2_targets" if task.endswith("mc2") else "mc1_targets"
    try:
        records = loads_json(read_text(path), object_pairs_hook=_pairs)
    except JsonError as e:
        raise DataError(f"{path}: malformed JSON ({e}); expected one JSON list of questions") from None
    if not isinstance(records, list):
        raise bad(f"{path}:1", "a JSON list of question objects", type(records).__name__)
    items = []
    for idx, pairs in enumerate(records):
        where = f"{path}: item {idx} of the JSON list"
        rec = dict(pairs) if isinstance(pairs, list) and all(isinstance(p, tuple) for p in pairs) else None
        if rec is None:
            raise bad(where, "an object with 'question' and targets", pairs)
        question, targets = rec.get("question"), rec.get(targets_key)
        if not isinstance(question, str) or not question.strip():
            raise bad(where, "a non-empty 'question'", question)
        if not isinstance(targets, list) or not all(isinstance(p, tuple) for p in targets):
            raise bad(where, f"{targets_key!r} mapping answers to 0/1", targets)
        # Upstream's 2025 data has a few "" answers (a trailing "; " in the CSV lists): an empty
        # continuation is not an answer, so drop them (see docs/tasks.md).
        kept = [(a, v) for a, v in targets if a.strip()]
        dropped = len(targets) - len(kept)
        choices = tuple(a for a, _ in kept)
        labels = [v for _, v in kept]
        if len(kept) < 2 or any(v not in (0, 1) or isinstance(v, bool) for v in labels) or 1 not in labels:
            raise bad(where, f"{targets_key!r} labels 0/1 with at least one 1", labels)
        if len(set(choices)) != len(choices):
            raise bad(where, f"distinct answers in {targets_key!r}", choices)
        gold_set = tuple(i for i, v in enumerate(labels) if v == 1)
        items.append(
            Item(
                id=f"{task}/{split}/{idx}",
                task=task,
                question=question,
                choices=choices,
                gold=gold_set[0],
                context=f"{TRUTHFULQA_PRIMER}\n\nQ: {question}\nA:",
                continuations=tuple(" " + c for c in choices),
                gold_set=gold_set if task.endswith("mc2") else (),
                meta={"source": f"{path.relative_to(data_dir)}: item {idx}"}
                | ({"dropped_empty_answers": str(dropped)} if dropped else {}),
            )
        )
    return items
