"""RESULTS.md's evidence from single items: the three rule-chosen traces, whether the answer stage follows what the
earlier stages named, and the sum-rule check. Pure functions of per-item rows (runs/<system>/items.jsonl)."""

from __future__ import annotations

from pathlib import Path

import diagnostics
import select_step
from recipe import Recipe

from fslm.evaluate.store import read_rows

PROMPT_CHARS = 700


def margin(row: dict) -> float | None:
    """Score of the gold choice minus the best other choice (single-gold multiple choice only)."""
    scores, gold = row.get("choice_scores"), row.get("gold")
    if not scores or row.get("gold_set") or not isinstance(gold, int) or len(scores) < 2:
        return None
    return scores[gold] - max(s for j, s in enumerate(scores) if j != gold)


def read_items(run: Path) -> dict[tuple[str, str], dict]:
    return {(row["task"], key): row for key, row in read_rows(run).items()}


def pick_examples(stack: dict, base: dict) -> list[tuple[str, str, dict | None, dict | None]]:
    """(title, rule, stack row, base row) for: stack right & base wrong (largest stack margin), a stage went wrong =
    stack wrong & base right (most confidently wrong), an ordinary good one (both right, median stack margin)."""
    pairs = [(k, stack[k], base[k]) for k in stack if k in base and margin(stack[k]) is not None]
    beat = sorted([p for p in pairs if p[1]["correct"] and not p[2]["correct"]], key=lambda p: -margin(p[1]))
    wrong = sorted([p for p in pairs if not p[1]["correct"] and p[2]["correct"]], key=lambda p: margin(p[1]))
    good = sorted([p for p in pairs if p[1]["correct"] and p[2]["correct"]], key=lambda p: margin(p[1]))
    ordinary = [good[len(good) // 2]] if good else []
    specs = [
        (
            "The stack beat the base model",
            "stack right, base wrong; the largest margin of the stack's gold choice",
            beat,
        ),
        ("A stage went wrong", "stack wrong, base right; the stack's most confident wrong pick", wrong),
        ("An ordinary good answer", "both right; the median margin of the stack's gold choice", ordinary),
    ]
    return [
        (title, rule, found[0][1] if found else None, found[0][2] if found else None) for title, rule, found in specs
    ]


def anchoring(rows: dict, final: str = "answer") -> dict | None:
    """Does the answer stage follow what the earlier stages said? Over multiple-choice items whose earlier texts
    (every stage but `final`, the answer stage) name exactly one option (its text, case-insensitive, options over 3
    characters): how often the stack picks it, how often it is the gold one, and the accuracy there and elsewhere."""
    named = followed = gold = right_named = other = right_other = 0
    for row in rows.values():
        choices, stages = row.get("choices") or [], row.get("stages") or {}
        if len(choices) < 2 or not stages or row.get("prediction") is None:
            continue
        said = " ".join(text for stage, text in stages.items() if stage != final).lower()
        hits = [j for j, c in enumerate(choices) if len(c.strip()) > 3 and c.strip().lower().rstrip(".") in said]
        if len(hits) == 1:
            named += 1
            followed += row["prediction"] == hits[0]
            gold += row["gold"] == hits[0]
            right_named += bool(row["correct"])
        else:
            other += 1
            right_other += bool(row["correct"])
    if named + other == 0:
        return None
    return {
        "items": named + other,
        "named": named,
        "followed": followed,
        "named_is_gold": gold,
        "acc_named": right_named / named if named else None,
        "acc_other": right_other / other if other else None,
    }


def unseen_texts(base: dict, stack: dict) -> dict:
    """The base model's rows carrying the stack's texts, which it never saw: `anchoring` of these says how often
    the base model picks the named option anyway (the control for how much reading the texts moves a scorer)."""
    return {key: {**row, "stages": (stack.get(key) or {}).get("stages")} for key, row in base.items()}


def trace_markdown(title: str, rule: str, row: dict | None, base: dict | None) -> list[str]:
    lines = [f"### {title}", "", f"Rule: {rule}.", ""]
    if row is None:
        return lines + ["No item matches this rule in this run.", ""]
    prompt = row["prompt"] if len(row["prompt"]) <= PROMPT_CHARS else row["prompt"][:PROMPT_CHARS] + " …"
    lines += [f"`{row['task']}` item `{row['id']}` ({row.get('source', '')})", "", "```text", prompt, "```", ""]
    for stage, text in row["stages"].items():
        lines.append(f"- **{stage}:** {text or '(empty)'}")
    lines.append("")
    lines += ["| option | stack log-prob | |", "|---|---:|---|"]
    for j, (choice, score) in enumerate(zip(row["choices"], row["choice_scores"])):
        marks = ", ".join(
            m
            for m, on in (
                ("gold", j == row["gold"]),
                ("stack's pick", j == row["prediction"]),
                ("base's pick", base is not None and j == base["prediction"]),
            )
            if on
        )
        lines.append(f"| {choice[:120]} | {score:.2f} | {marks} |")
    return lines + [""]


def sum_rule_markdown(recipe: Recipe, run_of: dict, summaries: dict) -> list[str]:
    """The trained stack's answer stage scoring with the earlier texts, without them, and with both scores added."""
    pairs = [
        (
            "held-out (select step)",
            select_step.select_dir(recipe) / "stack-trained",
            select_step.select_dir(recipe) / "stack-answer-only",
        ),
        ("test (the items above)", run_of.get("stack-trained"), run_of.get("stack-answer-only")),
    ]
    rows = []
    for where, texts, plain in pairs:
        if (
            texts is None
            or plain is None
            or not (texts / "summary.json").is_file()
            or not (plain / "summary.json").is_file()
        ):
            continue
        a, b = read_items(texts), read_items(plain)
        rule = diagnostics.sum_rule(a, b)
        if rule:
            shared = [k for k in a if k in b]
            rows.append(
                f"| {where} | {rule['n']} | {100 * diagnostics.macro_of(a, shared):.1f} | "
                f"{100 * diagnostics.macro_of(b, shared):.1f} | {100 * rule['macro']:.1f} |"
            )
    if not rows:
        return []
    return [
        "## Would the answer stage do better adding its no-text score?",
        "",
        "Attempt 1's answer stage scores each option after the earlier texts (trained stack) and with no earlier texts "
        "(answer stage alone); the sum rule picks the option with the highest sum of the two log-probabilities. A "
        "check computed from the two runs' per-item scores, with no free parameter; not a system of its own.",
        "",
        "| items | n | with texts | without texts | sum of both |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def traces_section(stack: Path, base: Path) -> list[str]:
    lines = ["## Example traces (trained stack vs base model)", ""]
    for title, rule, row, base_row in pick_examples(read_items(stack), read_items(base)):
        lines += trace_markdown(title, rule, row, base_row)
    return lines


def anchoring_section(summaries: dict, systems: dict, run_of: dict) -> list[str]:
    """`anchoring` for every stack, with the base model reading nothing as the control."""
    stacks = {
        name: anchoring(read_items(run_of[name]), final=summaries[name]["stages"][-1])
        for name in summaries
        if systems[name]["kind"] != "base" and name.startswith("stack")
    }
    stacks = {k: v for k, v in stacks.items() if v and v.get("named")}
    if not stacks:
        return []
    labels = {name: systems[name]["label"] for name in stacks}
    if "stack-trained" in summaries:  # control: how often the base model picks the named option unseen
        control = unseen_texts(read_items(run_of["base"]), read_items(run_of["stack-trained"]))
        stacks["base-control"] = anchoring(control, final=summaries["stack-trained"]["stages"][-1])
        labels["base-control"] = (
            f"{systems['base']['label']}, never shown the texts (control: the trained stack's texts)"
        )
    lines = [
        "## Does the answer stage follow the earlier stages?",
        "",
        "Multiple-choice items whose intent/facts/reasoning texts name exactly one option (by its text): how often the "
        "stack then picks that option, and how often that option is right."
        + (
            " The last row is the control: the base model alone, which never saw those texts, on the same items."
            if "base-control" in stacks
            else ""
        ),
        "",
        "| system | MC items | one option named | stack picks it | named option is gold | acc where named | acc elsewhere |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
    for name, a in stacks.items():
        lines.append(
            f"| {labels[name]} | {a['items']} | {a['named']} | {a['followed']} | {a['named_is_gold']} | "
            f"{pct(a['acc_named'])} | {pct(a['acc_other'])} |"
        )
    return lines + [""]


__all__ = [
    "anchoring",
    "anchoring_section",
    "margin",
    "pick_examples",
    "read_items",
    "sum_rule_markdown",
    "trace_markdown",
    "traces_section",
    "unseen_texts",
]
