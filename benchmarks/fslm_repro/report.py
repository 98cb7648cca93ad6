"""Step `report`: RESULTS.md (accuracy and cost tables, paired-bootstrap CIs vs the base model, wording derived from
the numbers, 3 example traces chosen by rule, each step's wall time) and results.png, from the step outputs.

This module holds the verdicts, the accuracy table and the chart; report_traces the per-item evidence, report_cost the
cost and wall-time tables."""

from __future__ import annotations

import io
from pathlib import Path

import select_step
from eval_step import system_index
from recipe import Recipe, read_json
from report_cost import cost_section, wall_time_section
from report_traces import anchoring, anchoring_section, pick_examples, sum_rule_markdown, traces_section, unseen_texts

from fslm.errors import ConfigError
from fslm.evaluate import compare
from fslm.evaluate.store import write_atomic

ANALYSIS = "ANALYSIS.md"  # optional, hand-written: included in RESULTS.md after the example traces
EPS = 1e-9  # bootstrap bounds are means of 0/1 values: -1e-17 is zero, not "excludes zero"


def pts(x: float) -> str:
    return f"{100 * x + 0.0:+.1f}" if abs(x) > EPS else "+0.0"


def excludes_zero(ci: list[float]) -> bool:
    return ci[0] > EPS or ci[1] < -EPS


def delta_cell(entry: dict) -> str:
    """A table cell for one paired comparison: difference, 95% CI, and `*` when the CI excludes zero."""
    return f"{pts(entry['diff'])} ({pts(entry['ci95'][0])} to {pts(entry['ci95'][1])})" + (
        " *" if excludes_zero(entry["ci95"]) else ""
    )


def verdict(entry: dict, a: str, b: str) -> str:
    """One honest sentence about acc(a) - acc(b) with its paired 95% CI; when the entry carries the macro with each
    task left out (`without`, see `with_leave_one_out`), a verdict that excludes zero also says whether one task carries it."""
    lo, hi = entry["ci95"]
    head = f"{a} vs {b}: {pts(entry['diff'])} pts (95% CI {pts(lo)} to {pts(hi)}, n={entry['n']})"
    if lo > EPS:
        return f"{head}: better; the CI excludes zero." + one_task_check(entry, better=True)
    if hi < -EPS:
        return f"{head}: worse; the CI excludes zero." + one_task_check(entry, better=False)
    return f"{head}: no difference detectable at this sample size; the CI includes zero."


def one_task_check(entry: dict, better: bool) -> str:
    """Does a macro verdict rest on one task? The weakest of the macros with one task left out, from the same replicates."""
    without = entry.get("without")
    if not without:
        return ""
    task, e = (min if better else max)(without.items(), key=lambda kv: kv[1]["ci95"][0 if better else 1])
    lo, hi = e["ci95"]
    weakest = f"without {task}, {pts(e['diff'])} pts (CI {pts(lo)} to {pts(hi)})"
    if (lo > EPS) if better else (hi < -EPS):
        return f" It holds with any one task left out (weakest: {weakest})."
    return f" It rests on one task: {weakest}, the CI includes zero."


def with_leave_one_out(result: dict) -> dict:
    """compare()'s per-task entries, the macro entry carrying the macro with each task left out (for `verdict`)."""
    tasks = dict(result["tasks"])
    if result.get("macro_without"):
        tasks["macro"] = {**tasks["macro"], "without": result["macro_without"]}
    return tasks


def scorer_verdicts(
    name: str, summaries: dict, systems: dict, run_of: dict, cmp_dir: Path, vs_base: dict, base_label: str
) -> list[str]:
    """Attempt 5 against the base model, against the same passages read by the untrained base model (what training
    the scorer adds), and against each larger single model (the issue's 'close to a 4x larger model')."""
    label = systems[name]["label"]
    lines = ["- Attempt 5 (trained scorer): " + verdict(vs_base, label, base_label)]
    pair = "stack-retrieval-tail-raw"
    if pair in summaries:
        entry = with_leave_one_out(compare(run_of[name], run_of[pair], out_dir=cmp_dir / f"{name}-vs-{pair}"))["macro"]
        lines.append(
            "- What training the scorer adds (same passages, same format): "
            + verdict(entry, label, systems[pair]["label"])
        )
    models = [other for other in summaries if systems[other]["kind"] == "model"]
    for other in models:
        entry = with_leave_one_out(compare(run_of[name], run_of[other], out_dir=cmp_dir / f"{name}-vs-{other}"))[
            "macro"
        ]
        lines.append("- Against a larger single model: " + verdict(entry, label, systems[other]["label"]))
    if models:
        lines.append(
            "  (Not like for like: attempt 5's adapter saw the benchmarks' own kind of question, 100 unevaluated items per "
            "task, and reads retrieved solved questions; the larger models answer zero-shot with neither.)"
        )
    readers = [other for other in summaries if systems[other]["kind"] == "model-retrieval"]
    for other in readers:
        entry = with_leave_one_out(compare(run_of[name], run_of[other], out_dir=cmp_dir / f"{name}-vs-{other}"))[
            "macro"
        ]
        lines.append(
            "- Against a larger model reading the same passages in the same format: "
            + verdict(entry, label, systems[other]["label"])
        )
    if readers:
        lines.append(
            "  (Like for like but for the training: only attempt 5's adapter saw 100 unevaluated items per task.)"
        )
    return lines


def reader_of(name: str) -> str:
    """The model-alone run a passage reader (`model-<ref>-retrieval-tail-raw`) pairs with."""
    return name.removesuffix("-retrieval-tail-raw")


def widest_task(summaries: dict, tasks: list[str]) -> str:
    """The task whose accuracy spreads most across systems: reported separately because one task can carry the macro."""

    def spread(task: str) -> float:
        accs = [s["tasks"][task]["acc"] for s in summaries.values() if task in s["tasks"]]
        return max(accs) - min(accs) if accs else 0.0

    return max(tasks, key=spread)


def chart_png(entries: list[tuple[str, dict]]) -> bytes:
    """Macro accuracy per system with its 95% CI, and per-task accuracy of the main systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    labels = [label for label, _ in entries]
    vals = [100 * s["macro_acc"] for _, s in entries]
    low = [v - 100 * s["macro_ci95"][0] for v, (_, s) in zip(vals, entries)]
    high = [100 * s["macro_ci95"][1] - v for v, (_, s) in zip(vals, entries)]
    left.barh(
        labels[::-1],
        vals[::-1],
        xerr=[low[::-1], high[::-1]],
        capsize=3,
        color="#4C72B0",
        edgecolor="black",
        linewidth=0.5,
    )
    left.set_xlabel("macro accuracy % (95% bootstrap CI)")
    left.tick_params(axis="y", labelsize=8)
    main = entries[: min(5, len(entries))]
    tasks = list(main[0][1]["tasks"])
    width = 0.8 / len(main)
    for k, (label, s) in enumerate(main):
        right.bar(
            [i + k * width for i in range(len(tasks))],
            [100 * (s["tasks"][t]["acc"] or 0) for t in tasks],
            width,
            label=label,
        )
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=35, ha="right", fontsize=8)
    right.set_ylabel("accuracy %")
    right.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def done(recipe: Recipe) -> bool:
    """RESULTS.md is newer than every input it is built from (and than the last finished step)."""
    results = recipe.out / "RESULTS.md"
    if not results.is_file():
        return False
    inputs = [
        recipe.out / f
        for f in (
            "systems.json",
            "teachers.json",
            "distill.json",
            "finetune.json",
            "choice.json",
            "neutral.json",
            "select.json",
            "timing.json",
            ANALYSIS,
        )
    ]
    inputs += list(recipe.runs_dir.glob("*/summary.json"))
    return all(results.stat().st_mtime >= p.stat().st_mtime for p in inputs if p.is_file())


def verdict_section(
    recipe: Recipe, summaries: dict, systems: dict, run_of: dict, cmp_dir: Path, vs_base: dict
) -> list[str]:
    """One sentence per comparison the issue asks about, each worded from its CI."""
    trained = "stack-trained" in summaries  # a report made while the eval step runs may not have it yet
    vs_trained = {
        name: with_leave_one_out(compare(run_of[name], run_of["stack-trained"], out_dir=cmp_dir / f"{name}-vs-trained"))
        for name in summaries
        if trained and systems[name]["kind"] == "ablation"
    }
    headline = {
        name: with_leave_one_out(
            compare(run_of["stack-trained"], run_of[name], out_dir=cmp_dir / f"trained-vs-{name}")
        )["macro"]
        for name in summaries
        if trained and systems[name]["kind"] in ("promptonly", "model", "format")
    }
    base_label = systems["base"]["label"]
    lines = ["## Verdict", ""]
    if "stack-trained" in vs_base:
        lines.append("- " + verdict(vs_base["stack-trained"]["macro"], "trained stack", base_label))
    for name in summaries:  # later attempts, each against the main baseline
        if systems[name]["kind"] == "trained" and name != "stack-trained":
            lines.append("- Attempt: " + verdict(vs_base[name]["macro"], systems[name]["label"], base_label))
    shipped = select_step.chosen(recipe)
    if shipped in vs_base:
        lines.append(f"- Shipped (chosen on held-out items, section below): {systems[shipped]['label']}.")
    for name in summaries:
        kind, label = systems[name]["kind"], systems[name]["label"]
        if kind == "notes":
            lines.append("- Do the texts help a plain scorer: " + verdict(vs_base[name]["macro"], label, base_label))
        if kind == "retrieval":
            lines.append(
                "- Do retrieved passages help a plain scorer: " + verdict(vs_base[name]["macro"], label, base_label)
            )
        if kind == "model-retrieval" and reader_of(name) in summaries:
            entry = with_leave_one_out(
                compare(run_of[name], run_of[reader_of(name)], out_dir=cmp_dir / f"{name}-vs-{reader_of(name)}")
            )["macro"]
            lines.append(
                "- Do retrieved passages help a larger model: "
                + verdict(entry, label, systems[reader_of(name)]["label"])
            )
        if kind == "retrieval-chat":
            lines.append("- Attempt 4 (retrieval): " + verdict(vs_base[name]["macro"], label, base_label))
            if "base-stackformat" in summaries:
                entry = with_leave_one_out(
                    compare(run_of[name], run_of["base-stackformat"], out_dir=cmp_dir / f"{name}-vs-base-stackformat")
                )["macro"]
                lines.append(
                    "- Do retrieved passages help the answer stage (same format): "
                    + verdict(entry, label, systems["base-stackformat"]["label"])
                )
        if kind == "scorer":
            lines += scorer_verdicts(name, summaries, systems, run_of, cmp_dir, vs_base[name]["macro"], base_label)
    intro = {"promptonly": "What training adds: ", "format": "Same prompt format: "}
    for name, entry in headline.items():
        lines.append(
            f"- {intro.get(systems[name]['kind'], '')}" + verdict(entry, "trained stack", systems[name]["label"])
        )
    for name, tasks_cmp in vs_trained.items():
        lines.append("- Ablation: " + verdict(tasks_cmp["macro"], systems[name]["label"], "the full trained stack"))
    if trained:
        ratio = summaries["stack-trained"]["cost"]["peak_rss_mb"] / max(summaries["base"]["cost"]["peak_rss_mb"], 1e-9)
        lines.append(
            f"- Memory: the trained stack's peak RSS is {ratio:.2f}x the base model's (each system's evaluation process, this run)."
        )
    return lines


def accuracy_section(summaries: dict, systems: dict, vs_base: dict) -> list[str]:
    tasks = list(summaries["base"]["tasks"])
    swing = widest_task(summaries, tasks)
    lines = [
        "## Accuracy",
        "",
        "| system | " + " | ".join(tasks) + f" | **macro** | macro without {swing} | Δ macro vs base (95% CI) |",
        "|---|" + "---:|" * (len(tasks) + 2) + "---|",
    ]
    for name, s in summaries.items():
        cells = [f"{100 * s['tasks'][t]['acc']:.1f}" if t in s["tasks"] else "—" for t in tasks]
        rest = [s["tasks"][t]["acc"] for t in tasks if t != swing and t in s["tasks"]]
        cells.append(f"**{100 * s['macro_acc']:.1f}**")
        cells.append(f"{100 * sum(rest) / len(rest):.1f}" if rest else "—")
        delta = delta_cell(vs_base[name]["macro"]) if name in vs_base else "(baseline)"
        lines.append(f"| {systems[name]['label']} | " + " | ".join(cells) + f" | {delta} |")
    spread = [100 * s["tasks"][swing]["acc"] for s in summaries.values() if swing in s["tasks"]]
    return lines + [
        "",
        f"macro without {swing}: the task whose accuracy differs most between systems left out (here from "
        f"{min(spread):.1f} to {max(spread):.1f}%, so it can decide a macro difference on its own).",
        "",
        "`*`: the CI excludes zero. Per-task CIs: `compare/<system>-vs-base/compare.md`; per-item outputs: "
        "`runs/<system>/items.jsonl`.",
        "",
    ]


def built_section(out: Path) -> list[str]:
    """How the stack was made: teacher, distilled data, fine-tuning and the later attempts' training."""
    teachers, distilled, tuned = (read_json(out / f) for f in ("teachers.json", "distill.json", "finetune.json"))
    lines = ["## How the stack was built", ""]
    used = distilled["teacher_ref"] if distilled else None
    if teachers and used in (None, teachers["chosen"]):
        lines.append(f"- Teacher: **{teachers['chosen']}** — {teachers['reason']} (candidates: teachers.md).")
    elif used:
        rule = f"; the rule would choose {teachers['reason']}" if teachers else ""
        lines.append(f"- Teacher: **{used}**, given with --teacher{rule}.")
    if distilled:
        top = ", ".join(f"{k} {v}" for k, v in sorted(distilled["filtered"].items(), key=lambda kv: -kv[1])[:5])
        lines.append(
            f"- Distilled: {distilled['records']} records, {distilled['kept']} kept; most frequent filters: {top or 'none'}."
        )
    if tuned:
        losses = ", ".join(
            f"{k} {v.get('first_loss', 0):.2f}→{v.get('final_loss', 0):.2f}" for k, v in tuned["stages"].items()
        )
        lines.append(
            f"- Fine-tuned: LoRA rank {tuned['rank']} (alpha {tuned['alpha']}) on {', '.join(tuned['targets'])}, {tuned['epochs']} epoch(s); "
            f"adapters stored fp16, {tuned['adapter_bytes_total'] / 1e6:.2f} MB in total (budget {tuned['budget_bytes'] / 1e6:.0f} MB); loss {losses}."
        )
    choice = read_json(out / "choice.json")
    if choice:
        stage = choice["answer_stage"]
        lines.append(
            f"- Attempt 2 (`choice` step): the answer stage retrained on {choice['alpaca_records']} Alpaca records + "
            f"{choice['questions']} choice-style questions from {', '.join(choice['sources'])} (never evaluation items); "
            f"earlier-stage texts by the trained stack itself; loss {stage.get('first_loss', 0):.2f}→{stage.get('final_loss', 0):.2f}."
        )
    neutral = read_json(out / "neutral.json")
    if neutral:
        losses = ", ".join(
            f"{k} {v.get('first_loss', 0):.2f}→{v.get('final_loss', 0):.2f}" for k, v in neutral["stages"].items()
        )
        lines.append(
            f"- Attempt 3 (`neutral` step): the reasoning stage redistilled by {neutral['teacher_ref']} without the gold, "
            f"asked for notes that state no answer ({neutral['kept']} of {neutral['records']} records kept, "
            f"{neutral['reused']} with attempt 1's intent/facts texts reused); reasoning and answer retrained, loss {losses}."
        )
    return lines + [""]


def run(recipe: Recipe, log=print) -> Path:
    out = recipe.out
    index = read_json(out / "systems.json") or system_index(recipe)  # before the eval step: the baselines so far
    systems = index["systems"]
    summaries = {name: read_json(out / info["run"] / "summary.json") for name, info in systems.items()}
    summaries = {k: v for k, v in summaries.items() if v is not None and v.get("n_items") == index["items_per_system"]}
    if "base" not in summaries:
        raise ConfigError(
            f"{out / systems['base']['run']}: the base model's evaluation is not finished; run the 'eval' step"
        )
    pending = [info["label"] for name, info in systems.items() if name not in summaries]
    run_of = {name: out / info["run"] for name, info in systems.items()}
    cmp_dir = out / "compare"
    vs_base = {
        name: with_leave_one_out(compare(run_of[name], run_of["base"], out_dir=cmp_dir / f"{name}-vs-base"))
        for name in summaries
        if name != "base"
    }

    lines = [f"# FSLM reproduction (issue 5) — scale `{recipe.scale}`", ""]
    if recipe.scale == "pilot":
        lines += [
            f"**Pilot scale: {recipe.distill_records} distilled records and {index['limit']} items per task, small enough for one "
            "session on this CPU. An early read with wide CIs, not the experiment issue 5 asks for (`--scale full`).**",
            "",
        ]
    elif recipe.scale != "full":
        lines += [
            f"**Smoke scale: {index['limit']} item(s) per task. These numbers check the pipeline; they say nothing about the systems.**",
            "",
        ]
    if pending:
        lines += [f"**Not evaluated yet** (rerun the recipe to finish them): {'; '.join(pending)}.", ""]
    lines += [
        f"Zero-shot, the same items for every system ({index['items_per_system']} per system: up to {index['limit']} per task, "
        f"all items where a task has fewer). Accuracy in %; Δ = paired bootstrap 95% CI of the macro difference vs the base model.",
        "",
    ]
    lines += verdict_section(recipe, summaries, systems, run_of, cmp_dir, vs_base)
    lines += [
        "",
        *accuracy_section(summaries, systems, vs_base),
        *cost_section(summaries, systems, run_of, read_json(out / "timing.json")),
        "![results](results.png)",
        "",
    ]
    if "stack-trained" in summaries:
        lines += traces_section(run_of["stack-trained"], run_of["base"])
    lines += anchoring_section(summaries, systems, run_of)
    lines += sum_rule_markdown(recipe, run_of, summaries)
    lines += select_step.markdown(recipe, {name: s["macro_acc"] for name, s in summaries.items()}, delta_cell)
    if (out / ANALYSIS).is_file():  # findings written by a person from the traces; the tables above stay generated
        lines += [(out / ANALYSIS).read_text(encoding="utf-8").rstrip(), ""]
    lines += built_section(out)
    lines += wall_time_section(recipe, (read_json(out / "steps.json") or {}).get("steps", {}))
    lines += [
        "",
        f"Regenerate: `python benchmarks/fslm_repro/run.py --scale {recipe.scale}` (resumes; finished steps are skipped).",
    ]
    write_atomic(out / "results.png", chart_png([(systems[n]["label"], s) for n, s in summaries.items()]))
    write_atomic(out / "RESULTS.md", "\n".join(lines) + "\n")
    log(f"  wrote {out / 'RESULTS.md'}")
    return out / "RESULTS.md"


__all__ = ["anchoring", "delta_cell", "done", "pick_examples", "run", "unseen_texts", "verdict", "widest_task"]
