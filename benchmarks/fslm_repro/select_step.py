"""Step `select`: which trained stack to ship, chosen on held-out items (`fslm eval --split heldout`), never on the
items RESULTS.md reports.

Candidates are the trained 4-stage attempts (attempt 1 `stack-trained`, attempt 3 `stack-trained-neutral`, attempt 2
`stack-trained-choice`). Rule, fixed before any held-out number is seen: the attempt with the highest held-out
macro accuracy; a tie goes to the earlier attempt. The `ship` step packages it as the default stack. For context the
same held-out items also score the answer stage alone, the base model in the stack's prompt format, and the base
model: if one of those beats every attempt on held-out items too, RESULTS.md says so.

out/select/<system>/   held-out run folders (fslm.evaluate; resume per batch)
out/select.json        held-out macro per candidate, the rule, the chosen attempt
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eval_step import EvalJob, SystemSpec, ablations, run_jobs, systems, write_prompt_stacks
from recipe import Recipe, read_json

from fslm.errors import ConfigError
from fslm.evaluate import compare, parse_tasks, select_items
from fslm.evaluate.heldout import EVAL_RESERVE, HELDOUT
from fslm.evaluate.store import write_json

CONTEXT = (
    "stack-answer-only",
    "base-stackformat",
    "base",
    "stack-retrieval-raw",
    "stack-retrieval",
    "stack-retrieval-tail-raw",
    "stack-scorer",
)
RULE = "highest held-out macro accuracy among the trained 4-stage attempts (tie: the earlier attempt)"


def select_dir(recipe: Recipe) -> Path:
    return recipe.out / "select"


def candidates(recipe: Recipe) -> tuple[list[SystemSpec], list[SystemSpec]]:
    """(attempts, context systems), attempts in the order they were made (attempt 1, 2, 3)."""
    specs = systems(recipe)
    attempts = [s for s in specs if s.kind == "trained"]
    order = {"stack-trained": 0, "stack-trained-choice": 1, "stack-trained-neutral": 2}
    attempts.sort(key=lambda s: order.get(s.name, len(order)))
    return attempts, [s for s in specs if s.name in CONTEXT]


def expected_items(recipe: Recipe) -> int:
    return sum(len(select_items(t, recipe.select_limit, HELDOUT)) for t in parse_tasks(recipe.tasks))


def jobs(recipe: Recipe, specs: list[SystemSpec]) -> list[EvalJob]:
    """Held-out runs of these systems (`select/<system>/`)."""
    expected = expected_items(recipe)
    return [EvalJob(s, select_dir(recipe) / s.name, recipe.select_limit, expected, HELDOUT) for s in specs]


def _summary(recipe: Recipe, name: str, expected: int) -> dict | None:
    summary = read_json(select_dir(recipe) / name / "summary.json")
    return summary if summary is not None and summary.get("n_items") == expected else None


def chosen(recipe: Recipe) -> str | None:
    """The selected attempt's system name (None before the step ran)."""
    data = read_json(recipe.out / "select.json")
    return data["chosen"] if data else None


def chosen_stack(recipe: Recipe) -> Path:
    """stack.yaml of the attempt to ship: the selected one, or attempt 1 when selection is off or has not run."""
    name = chosen(recipe) if recipe.select_limit else None
    for spec in candidates(recipe)[0]:
        if spec.name == (name or "stack-trained"):
            return spec.stack
    raise ConfigError(
        f"{recipe.out / 'select.json'} chose {name!r}, which is not an attempt of this recipe; delete it to redo 'select'"
    )


def done(recipe: Recipe) -> bool:
    if not recipe.select_limit:
        return True
    data = read_json(recipe.out / "select.json")
    if data is None or data.get("limit") != recipe.select_limit:
        return False
    expected = expected_items(recipe)
    attempts, context = candidates(recipe)
    return all(_summary(recipe, s.name, expected) for s in attempts + context)


def run(recipe: Recipe, log=print) -> dict:
    if not recipe.select_limit:
        return {}
    attempts, context = candidates(recipe)
    missing = [str(s.stack) for s in attempts if not s.stack.is_file()]
    if missing:
        raise ConfigError(f"no {', '.join(missing)}: run the 'finetune' (and 'choice'/'neutral') steps first")
    expected = expected_items(recipe)
    write_prompt_stacks(recipe)
    ablations(recipe, write=True)  # the answer stage alone is a context system
    run_jobs(recipe, jobs(recipe, attempts + context), log)
    macro = {s.name: _summary(recipe, s.name, expected)["macro_acc"] for s in attempts + context}
    best = max(attempts, key=lambda s: macro[s.name])  # max keeps the first of equal values: the earlier attempt
    data = {
        "split": HELDOUT,
        "limit": recipe.select_limit,
        "items_per_system": expected,
        "rule": RULE,
        "attempts": [s.name for s in attempts],
        "context": [s.name for s in context],
        "labels": {s.name: s.label for s in attempts + context},
        "heldout_macro": macro,
        "chosen": best.name,
        "beaten_by_context": [n for n in (s.name for s in context) if macro[n] > macro[best.name]],
    }
    write_json(recipe.out / "select.json", data)
    log(f"  chosen on held-out items: {best.name} ({100 * macro[best.name]:.1f}% macro)")
    return data


def heldout_vs_base(recipe: Recipe, names: list[str]) -> dict[str, dict]:
    """Each system's held-out macro minus the base model's with its paired-bootstrap CI (compare's macro entry): at
    ~50 items per task a held-out ranking alone says little."""
    if "base" not in names:
        return {}
    base = select_dir(recipe) / "base"
    return {
        name: compare(select_dir(recipe) / name, base, out_dir=recipe.out / "compare" / f"heldout-{name}-vs-base")[
            "tasks"
        ]["macro"]
        for name in names
        if name != "base"
    }


def markdown(recipe: Recipe, test_macro: dict[str, float], delta_cell: Callable[[dict], str]) -> list[str]:
    """RESULTS.md's section: held-out numbers beside test numbers, and what was shipped; `delta_cell` formats a
    comparison as the report's other tables do."""
    data = read_json(recipe.out / "select.json")
    if not data:
        return []
    lines = [
        "## Which attempt ships (chosen on held-out items)",
        "",
        f"Rule: {data['rule']}. Held-out items: `--split heldout`, {data['items_per_system']} per system (up to "
        f"{data['limit']} per task from dev/train splits, or from past item {EVAL_RESERVE} of a task's only split), disjoint "
        "from the items above. Held-out vs base: paired bootstrap 95% CI in points (`compare/heldout-<system>-vs-base/`).",
        "",
        "| system | held-out macro | held-out vs base (95% CI) | test macro (above) |",
        "|---|---:|---:|---:|",
    ]
    vs_base = heldout_vs_base(recipe, data["attempts"] + data["context"])
    for name in data["attempts"] + data["context"]:
        mark = " **(chosen)**" if name == data["chosen"] else ""
        test = f"{100 * test_macro[name]:.1f}" if name in test_macro else "—"
        lines.append(
            f"| {data['labels'][name]}{mark} | {100 * data['heldout_macro'][name]:.1f} | {delta_cell(vs_base[name]) if name in vs_base else '—'} | {test} |"
        )
    lines.append("")
    if data["beaten_by_context"]:
        names = ", ".join(data["labels"][n] for n in data["beaten_by_context"])
        lines += [f"On held-out items too, the chosen stack is below: {names}.", ""]
    return lines
