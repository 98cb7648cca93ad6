"""Post-hoc checks on per-item outputs, for RESULTS.md: questions about the systems, not systems of their own.

`sum_rule`: would the answer stage do better if it added its score of each option WITHOUT the earlier texts to its
score WITH them (a product of the two distributions)? The texts of a 135M stack often restate one option and the
scorer follows it (the anchoring table); the sum keeps the texts' vote but lets the plain reading outvote a weak
one. The rule has no free parameter, so computing it on held-out and on test items tunes nothing; a rule that helps
on held-out items is a candidate for a real system, to be evaluated as one.
"""

from __future__ import annotations

from fslm.evaluate.scoring import score_choices
from fslm.tasks import Item


def _item(row: dict) -> Item:
    choices = tuple(row["choices"])
    return Item(
        id=str(row["id"]),
        task=row["task"],
        question="",
        choices=choices,
        gold=row["gold"],
        context="",
        continuations=choices,
        gold_set=tuple(row.get("gold_set") or ()),
    )


def sum_rule(with_texts: dict, without_texts: dict) -> dict | None:
    """Per-task and macro acc of argmax(score with texts + score without) over the items both runs share (rows keyed
    by (task, id) as report.read_items gives them); generation items keep the with-texts row's result. None when
    the runs share no items."""
    per_task: dict[str, list[float]] = {}
    for key, row in with_texts.items():
        plain = without_texts.get(key)
        if plain is None:
            continue
        if row.get("choice_scores") and plain.get("choice_scores"):
            summed = [a + b for a, b in zip(row["choice_scores"], plain["choice_scores"], strict=True)]
            acc = score_choices(_item(row), summed, row["choice_chars"]).acc
        else:
            acc = float(row["acc"])
        per_task.setdefault(row["task"], []).append(acc)
    if not per_task:
        return None
    tasks = {t: sum(v) / len(v) for t, v in per_task.items()}
    return {"tasks": tasks, "macro": sum(tasks.values()) / len(tasks), "n": sum(len(v) for v in per_task.values())}


def macro_of(rows: dict, keys) -> float:
    """Macro accuracy of one run over the given (task, id) keys: the same items the rule was computed on."""
    per_task: dict[str, list[float]] = {}
    for key in keys:
        per_task.setdefault(key[0], []).append(float(rows[key]["acc"]))
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)
