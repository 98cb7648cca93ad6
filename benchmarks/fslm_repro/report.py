"""Step `report`: RESULTS.md (accuracy and cost tables, paired-bootstrap CIs vs the base model, wording derived from
the numbers, 3 example traces chosen by rule, each step's wall time) and results.png, from the step outputs."""

from __future__ import annotations

import io
from pathlib import Path

from fslm.errors import ConfigError
from fslm.evaluate import compare
from fslm.evaluate.store import read_rows, write_atomic

import diagnostics
import select_step
from eval_step import system_index
from recipe import STEPS, Recipe, read_json

PROMPT_CHARS = 700
ANALYSIS = "ANALYSIS.md"  # optional, hand-written: included in RESULTS.md after the example traces
EPS = 1e-9  # bootstrap bounds are means of 0/1 values: -1e-17 is zero, not "excludes zero"


def pts(x: float) -> str:
    return f"{100 * x + 0.0:+.1f}" if abs(x) > EPS else "+0.0"


def excludes_zero(ci: list[float]) -> bool:
    return ci[0] > EPS or ci[1] < -EPS


def delta_cell(entry: dict) -> str:
    """A table cell for one paired comparison: difference, 95% CI, and `*` when the CI excludes zero."""
    return f"{pts(entry['diff'])} ({pts(entry['ci95'][0])} to {pts(entry['ci95'][1])})" + (" *" if excludes_zero(entry["ci95"]) else "")


def verdict(entry: dict, a: str, b: str) -> str:
    """One honest sentence about acc(a) - acc(b) with its paired 95% CI."""
    lo, hi = entry["ci95"]
    head = f"{a} vs {b}: {pts(entry['diff'])} pts (95% CI {pts(lo)} to {pts(hi)}, n={entry['n']})"
    if lo > EPS:
        return f"{head}: better; the CI excludes zero."
    if hi < -EPS:
        return f"{head}: worse; the CI excludes zero."
    return f"{head}: no difference detectable at this sample size; the CI includes zero."


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
        ("The stack beat the base model", "stack right, base wrong; the largest margin of the stack's gold choice", beat),
        ("A stage went wrong", "stack wrong, base right; the stack's most confident wrong pick", wrong),
        ("An ordinary good answer", "both right; the median margin of the stack's gold choice", ordinary),
    ]
    return [(title, rule, found[0][1] if found else None, found[0][2] if found else None) for title, rule, found in specs]


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
    return {"items": named + other, "named": named, "followed": followed, "named_is_gold": gold,
            "acc_named": right_named / named if named else None, "acc_other": right_other / other if other else None}


def unseen_texts(base: dict, stack: dict) -> dict:
    """The base model's rows carrying the stack's texts, which it never saw: `anchoring` of these says how often
    the base model picks the named option anyway (the control for how much reading the texts moves a scorer)."""
    return {key: {**row, "stages": (stack.get(key) or {}).get("stages")} for key, row in base.items()}


def scorer_verdicts(name: str, summaries: dict, systems: dict, run_of: dict, cmp_dir: Path, vs_base: dict, base_label: str) -> list[str]:
    """Attempt 5 against the base model, against the same passages read by the untrained base model (what training
    the scorer adds), and against each larger single model (the issue's 'close to a 4x larger model')."""
    label = systems[name]["label"]
    lines = ["- Attempt 5 (trained scorer): " + verdict(vs_base, label, base_label)]
    pair = "stack-retrieval-tail-raw"
    if pair in summaries:
        entry = compare(run_of[name], run_of[pair], out_dir=cmp_dir / f"{name}-vs-{pair}")["tasks"]["macro"]
        lines.append("- What training the scorer adds (same passages, same format): " + verdict(entry, label, systems[pair]["label"]))
    models = [other for other in summaries if systems[other]["kind"] == "model"]
    for other in models:
        entry = compare(run_of[name], run_of[other], out_dir=cmp_dir / f"{name}-vs-{other}")["tasks"]["macro"]
        lines.append("- Against a larger single model: " + verdict(entry, label, systems[other]["label"]))
    if models:
        lines.append("  (Not like for like: attempt 5's adapter saw the benchmarks' own kind of question, 100 unevaluated items per "
                     "task, and reads retrieved solved questions; the larger models answer zero-shot with neither.)")
    return lines


def widest_task(summaries: dict, tasks: list[str]) -> str:
    """The task whose accuracy spreads most across systems: reported separately because one task can carry the macro."""
    def spread(task: str) -> float:
        accs = [s["tasks"][task]["acc"] for s in summaries.values() if task in s["tasks"]]
        return max(accs) - min(accs) if accs else 0.0
    return max(tasks, key=spread)


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
        marks = ", ".join(m for m, on in (("gold", j == row["gold"]), ("stack's pick", j == row["prediction"]),
                                          ("base's pick", base is not None and j == base["prediction"])) if on)
        lines.append(f"| {choice[:120]} | {score:.2f} | {marks} |")
    return lines + [""]


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
    left.barh(labels[::-1], vals[::-1], xerr=[low[::-1], high[::-1]], capsize=3, color="#4C72B0", edgecolor="black", linewidth=0.5)
    left.set_xlabel("macro accuracy % (95% bootstrap CI)")
    left.tick_params(axis="y", labelsize=8)
    main = entries[: min(5, len(entries))]
    tasks = list(main[0][1]["tasks"])
    width = 0.8 / len(main)
    for k, (label, s) in enumerate(main):
        right.bar([i + k * width for i in range(len(tasks))], [100 * (s["tasks"][t]["acc"] or 0) for t in tasks], width, label=label)
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=35, ha="right", fontsize=8)
    right.set_ylabel("accuracy %")
    right.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def sum_rule_markdown(recipe: Recipe, run_of: dict, summaries: dict) -> list[str]:
    """The trained stack's answer stage scoring with the earlier texts, without them, and with both scores added."""
    pairs = [("held-out (select step)", select_step.select_dir(recipe) / "stack-trained", select_step.select_dir(recipe) / "stack-answer-only"),
             ("test (the items above)", run_of.get("stack-trained"), run_of.get("stack-answer-only"))]
    rows = []
    for where, texts, plain in pairs:
        if texts is None or plain is None or not (texts / "summary.json").is_file() or not (plain / "summary.json").is_file():
            continue
        a, b = read_items(texts), read_items(plain)
        rule = diagnostics.sum_rule(a, b)
        if rule:
            shared = [k for k in a if k in b]
            rows.append(f"| {where} | {rule['n']} | {100 * diagnostics.macro_of(a, shared):.1f} | "
                        f"{100 * diagnostics.macro_of(b, shared):.1f} | {100 * rule['macro']:.1f} |")
    if not rows:
        return []
    return ["## Would the answer stage do better adding its no-text score?", "",
            "Attempt 1's answer stage scores each option after the earlier texts (trained stack) and with no earlier texts "
            "(answer stage alone); the sum rule picks the option with the highest sum of the two log-probabilities. A "
            "check computed from the two runs' per-item scores, with no free parameter; not a system of its own.", "",
            "| items | n | with texts | without texts | sum of both |", "|---|---:|---:|---:|---:|", *rows, ""]


def cost_section(summaries: dict, systems: dict, run_of: dict, timing: dict | None) -> list[str]:
    """Params and tokens from the full runs; seconds from the timing step when it has timed these systems: the full
    runs span sessions and machines, so only seconds measured together compare systems."""
    timed = (timing or {}).get("systems", {})
    lines = ["## Cost", "", "| system | params touched | generated tokens/item | s/item, timed together | x base | "
             "s/item, full run | CPU s, full run | peak RSS MB | threads | stage outputs reused |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        c, t = s["cost"], timed.get(name, {})
        threads, reused = run_conditions(run_of[name])
        lines.append(f"| {systems[name]['label']} | {s['params_touched'] / 1e6:.1f}M | {c['generated_tokens_per_item']} | "
                     f"{t.get('seconds_per_item', '—')} | {t.get('x_base') or '—'} | {c['seconds_per_item']} | "
                     f"{c.get('cpu_seconds')} | {c['peak_rss_mb']} | {threads} | {reused} |")
    if timing:
        loads = [r["loadavg_start"][0] for r in timed.values() if r.get("loadavg_start")]
        when = f"one after another in one session ({timing['started']})"
        if timing.get("resumed"):  # older timing.json files have no such field: they were always one session
            days = sorted({r["timed_at"] for r in timed.values() if r.get("timed_at")})
            when = (f"one after another, resumed once stopped ({', '.join(timing['resumed'])} timed by an earlier attempt on "
                    f"the same CPU and threads; from {days[0]} to {days[-1]})")
        lines += ["", f"Timed together: the `timing` step ran every system on the same {timing['items_per_system']} test items "
                  f"({timing['setup']['limit']} per task), {when}, on "
                  f"{timing['cpu']} with {timing['threads']} torch thread(s) each and no stage cache; 1-min load average "
                  f"at each start {min(loads, default=0)}–{max(loads, default=0)} ({timing['cpu_count']} cores). "
                  "x base is that s/item over the base model's."]
    else:
        lines += ["", "No `timing` step yet: the full runs' seconds above may come from different sessions and machines."]
    lines += ["", "s/item, full run: wall time over the full run's sessions, on a shared 2-core CPU (each run's run.json has the "
              "load average and, since session 9, the CPU of every session); CPU s is process CPU time; threads: torch "
              "threads of the evaluating process. Stage outputs reused: the share of this system's stage generations "
              "found in the recipe's stage cache (asked identically by a system evaluated before it); their tokens and "
              "seconds count at the cost measured when they were generated, so s/item and tokens describe the system "
              "as configured, while CPU s is what this run spent.", ""]
    return lines


def step_cpus(sessions: list[dict]) -> str:
    """A long step can span machines; its wall time is only as comparable as its CPUs (older sessions did not record it)."""
    worked = [s for s in sessions if s.get("status") != "skipped"]
    return "; ".join(sorted({s.get("cpu", "not recorded") for s in worked})) or "—"


def run_conditions(run: Path) -> tuple[str, str]:
    """(torch threads, share of stage outputs reused from the stage cache) over a run's sessions, from run.json."""
    sessions = (read_json(run / "run.json") or {}).get("sessions", [])
    threads = sorted({s["threads"] for s in sessions if s.get("threads")})
    caches = [s["stage_cache"] for s in sessions if s.get("stage_cache")]
    asked = sum(c["hits"] + c["misses"] for c in caches)
    reused = f"{100 * sum(c['hits'] for c in caches) / asked:.0f}%" if asked else "—"
    return ("/".join(map(str, threads)) or "—"), reused


def _fmt_hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def done(recipe: Recipe) -> bool:
    """RESULTS.md is newer than every input it is built from (and than the last finished step)."""
    results = recipe.out / "RESULTS.md"
    if not results.is_file():
        return False
    inputs = [recipe.out / f for f in ("systems.json", "teachers.json", "distill.json", "finetune.json", "choice.json", "neutral.json",
                                       "select.json", "timing.json", ANALYSIS)]
    inputs += list(recipe.runs_dir.glob("*/summary.json"))
    return all(results.stat().st_mtime >= p.stat().st_mtime for p in inputs if p.is_file())


def run(recipe: Recipe, log=print) -> Path:
    out = recipe.out
    index = read_json(out / "systems.json") or system_index(recipe)  # before the eval step: the baselines so far
    systems = index["systems"]
    summaries = {name: read_json(out / info["run"] / "summary.json") for name, info in systems.items()}
    summaries = {k: v for k, v in summaries.items() if v is not None and v.get("n_items") == index["items_per_system"]}
    if "base" not in summaries:
        raise ConfigError(f"{out / systems['base']['run']}: the base model's evaluation is not finished; run the 'eval' step")
    pending = [info["label"] for name, info in systems.items() if name not in summaries]
    run_of = {name: out / info["run"] for name, info in systems.items()}
    cmp_dir = out / "compare"
    vs_base = {name: compare(run_of[name], run_of["base"], out_dir=cmp_dir / f"{name}-vs-base")["tasks"]
               for name in summaries if name != "base"}
    trained = "stack-trained" in summaries  # a report made while the eval step runs may not have it yet
    vs_trained = {name: compare(run_of[name], run_of["stack-trained"], out_dir=cmp_dir / f"{name}-vs-trained")["tasks"]
                  for name in summaries if trained and systems[name]["kind"] == "ablation"}
    headline = {name: compare(run_of["stack-trained"], run_of[name], out_dir=cmp_dir / f"trained-vs-{name}")["tasks"]["macro"]
                for name in summaries if trained and systems[name]["kind"] in ("promptonly", "model", "format")}
    tasks = list(summaries["base"]["tasks"])
    steps = (read_json(out / "steps.json") or {}).get("steps", {})
    teachers, distilled, tuned = (read_json(out / f) for f in ("teachers.json", "distill.json", "finetune.json"))

    lines = [f"# FSLM reproduction (issue 5) — scale `{recipe.scale}`", ""]
    if recipe.scale == "pilot":
        lines += [f"**Pilot scale: {recipe.distill_records} distilled records and {index['limit']} items per task, small enough for one "
                  "session on this CPU. An early read with wide CIs, not the experiment issue 5 asks for (`--scale full`).**", ""]
    elif recipe.scale != "full":
        lines += [f"**Smoke scale: {index['limit']} item(s) per task. These numbers check the pipeline; they say nothing about the systems.**", ""]
    if pending:
        lines += [f"**Not evaluated yet** (rerun the recipe to finish them): {'; '.join(pending)}.", ""]
    lines += [f"Zero-shot, the same items for every system ({index['items_per_system']} per system: up to {index['limit']} per task, "
              f"all items where a task has fewer). Accuracy in %; Δ = paired bootstrap 95% CI of the macro difference vs the base model.", "",
              "## Verdict", ""]
    base_label = systems["base"]["label"]
    if "stack-trained" in vs_base:
        lines.append("- " + verdict(vs_base["stack-trained"]["macro"], "trained stack", base_label))
    for name in summaries:  # later attempts, each against the main baseline
        if systems[name]["kind"] == "trained" and name != "stack-trained":
            lines.append("- Attempt: " + verdict(vs_base[name]["macro"], systems[name]["label"], base_label))
    shipped = select_step.chosen(recipe)
    if shipped in vs_base:
        lines.append(f"- Shipped (chosen on held-out items, section below): {systems[shipped]['label']}.")
    for name in summaries:
        if systems[name]["kind"] == "notes":
            lines.append("- Do the texts help a plain scorer: " + verdict(vs_base[name]["macro"], systems[name]["label"], base_label))
        if systems[name]["kind"] == "retrieval":
            lines.append("- Do retrieved passages help a plain scorer: " + verdict(vs_base[name]["macro"], systems[name]["label"], base_label))
        if systems[name]["kind"] == "retrieval-chat":
            lines.append("- Attempt 4 (retrieval): " + verdict(vs_base[name]["macro"], systems[name]["label"], base_label))
            if "base-stackformat" in summaries:
                entry = compare(run_of[name], run_of["base-stackformat"], out_dir=cmp_dir / f"{name}-vs-base-stackformat")["tasks"]["macro"]
                lines.append("- Do retrieved passages help the answer stage (same format): "
                             + verdict(entry, systems[name]["label"], systems["base-stackformat"]["label"]))
        if systems[name]["kind"] == "scorer":
            lines += scorer_verdicts(name, summaries, systems, run_of, cmp_dir, vs_base[name]["macro"], base_label)
    intro = {"promptonly": "What training adds: ", "format": "Same prompt format: "}
    for name, entry in headline.items():
        what = intro.get(systems[name]["kind"], "")
        lines.append(f"- {what}" + verdict(entry, "trained stack", systems[name]["label"]))
    for name, tasks_cmp in vs_trained.items():
        lines.append("- Ablation: " + verdict(tasks_cmp["macro"], systems[name]["label"], "the full trained stack"))
    if "stack-trained" in summaries:
        ratio = summaries["stack-trained"]["cost"]["peak_rss_mb"] / max(summaries["base"]["cost"]["peak_rss_mb"], 1e-9)
        lines.append(f"- Memory: the trained stack's peak RSS is {ratio:.2f}x the base model's (each system's evaluation process, this run).")
    swing = widest_task(summaries, tasks)
    lines += ["", "## Accuracy", "",
              "| system | " + " | ".join(tasks) + f" | **macro** | macro without {swing} | Δ macro vs base (95% CI) |",
              "|---|" + "---:|" * (len(tasks) + 2) + "---|"]
    for name, s in summaries.items():
        cells = [f"{100 * s['tasks'][t]['acc']:.1f}" if t in s["tasks"] else "—" for t in tasks]
        rest = [s["tasks"][t]["acc"] for t in tasks if t != swing and t in s["tasks"]]
        cells.append(f"**{100 * s['macro_acc']:.1f}**")
        cells.append(f"{100 * sum(rest) / len(rest):.1f}" if rest else "—")
        if name in vs_base:
            e = vs_base[name]["macro"]
            delta = delta_cell(e)
        else:
            delta = "(baseline)"
        lines.append(f"| {systems[name]['label']} | " + " | ".join(cells) + f" | {delta} |")
    spread = [100 * s["tasks"][swing]["acc"] for s in summaries.values() if swing in s["tasks"]]
    lines += ["", f"macro without {swing}: the task whose accuracy differs most between systems left out (here from "
              f"{min(spread):.1f} to {max(spread):.1f}%, so it can decide a macro difference on its own).", "", "`*`: the CI excludes zero. Per-task CIs: `compare/<system>-vs-base/compare.md`; per-item outputs: `runs/<system>/items.jsonl`.", "",
              *cost_section(summaries, systems, run_of, read_json(out / "timing.json")),
              "![results](results.png)", ""]
    if "stack-trained" in summaries:
        lines += ["## Example traces (trained stack vs base model)", ""]
        for title, rule, row, base_row in pick_examples(read_items(run_of["stack-trained"]), read_items(run_of["base"])):
            lines += trace_markdown(title, rule, row, base_row)
    stacks = {name: anchoring(read_items(run_of[name]), final=summaries[name]["stages"][-1])
              for name in summaries if systems[name]["kind"] != "base" and name.startswith("stack")}
    stacks = {k: v for k, v in stacks.items() if v and v.get("named")}
    if stacks and "stack-trained" in summaries:  # control: how often the base model picks the named option unseen
        control = unseen_texts(read_items(run_of["base"]), read_items(run_of["stack-trained"]))
        stacks["base-control"] = anchoring(control, final=summaries["stack-trained"]["stages"][-1])
        systems = {**systems, "base-control": {"label": f"{base_label}, never shown the texts (control: the trained stack's texts)"}}
    if stacks:
        lines += ["## Does the answer stage follow the earlier stages?", "",
                  "Multiple-choice items whose intent/facts/reasoning texts name exactly one option (by its text): how often the "
                  "stack then picks that option, and how often that option is right."
                  + (" The last row is the control: the base model alone, which never saw those texts, on the same items."
                     if "base-control" in stacks else ""), "",
                  "| system | MC items | one option named | stack picks it | named option is gold | acc where named | acc elsewhere |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
        for name, a in stacks.items():
            lines.append(f"| {systems[name]['label']} | {a['items']} | {a['named']} | {a['followed']} | {a['named_is_gold']} | "
                         f"{pct(a['acc_named'])} | {pct(a['acc_other'])} |")
        lines.append("")
    lines += sum_rule_markdown(recipe, run_of, summaries)
    lines += select_step.markdown(recipe, {name: s["macro_acc"] for name, s in summaries.items()}, delta_cell)
    if (out / ANALYSIS).is_file():  # findings written by a person from the traces; the tables above stay generated
        lines += [(out / ANALYSIS).read_text(encoding="utf-8").rstrip(), ""]
    lines += ["## How the stack was built", ""]
    used = distilled["teacher_ref"] if distilled else None
    if teachers and used in (None, teachers["chosen"]):
        lines.append(f"- Teacher: **{teachers['chosen']}** — {teachers['reason']} (candidates: teachers.md).")
    elif used:
        rule = f"; the rule would choose {teachers['reason']}" if teachers else ""
        lines.append(f"- Teacher: **{used}**, given with --teacher{rule}.")
    if distilled:
        top = ", ".join(f"{k} {v}" for k, v in sorted(distilled["filtered"].items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"- Distilled: {distilled['records']} records, {distilled['kept']} kept; most frequent filters: {top or 'none'}.")
    if tuned:
        losses = ", ".join(f"{k} {v.get('first_loss', 0):.2f}→{v.get('final_loss', 0):.2f}" for k, v in tuned["stages"].items())
        lines.append(f"- Fine-tuned: LoRA rank {tuned['rank']} (alpha {tuned['alpha']}) on {', '.join(tuned['targets'])}, {tuned['epochs']} epoch(s); "
                     f"adapters stored fp16, {tuned['adapter_bytes_total'] / 1e6:.2f} MB in total (budget {tuned['budget_bytes'] / 1e6:.0f} MB); loss {losses}.")
    choice = read_json(out / "choice.json")
    if choice:
        stage = choice["answer_stage"]
        lines.append(f"- Attempt 2 (`choice` step): the answer stage retrained on {choice['alpaca_records']} Alpaca records + "
                     f"{choice['questions']} choice-style questions from {', '.join(choice['sources'])} (never evaluation items); "
                     f"earlier-stage texts by the trained stack itself; loss {stage.get('first_loss', 0):.2f}→{stage.get('final_loss', 0):.2f}.")
    neutral = read_json(out / "neutral.json")
    if neutral:
        losses = ", ".join(f"{k} {v.get('first_loss', 0):.2f}→{v.get('final_loss', 0):.2f}" for k, v in neutral["stages"].items())
        lines.append(f"- Attempt 3 (`neutral` step): the reasoning stage redistilled by {neutral['teacher_ref']} without the gold, "
                     f"asked for notes that state no answer ({neutral['kept']} of {neutral['records']} records kept, "
                     f"{neutral['reused']} with attempt 1's intent/facts texts reused); reasoning and answer retrained, loss {losses}.")
    lines += ["", "## Wall time per step", "", "| step | status | wall time | sessions | CPUs of the sessions that worked |",
              "|---|---|---:|---:|---|"]
    for step, e in sorted(steps.items(), key=lambda kv: STEPS.index(kv[0]) if kv[0] in STEPS else len(STEPS)):
        lines.append(f"| {step} | {'off' if step in recipe.steps_off else e['status']} | {_fmt_hms(e['wall_seconds'])} | {len(e['sessions'])} | {step_cpus(e['sessions'])} |")
    lines += ["", "The report step's own row shows it running: its time is logged in steps.json after this file is written. "
              "interrupted: a session that stopped without logging its end (killed, or its machine went away); its "
              "time counts up to its last heartbeat (once a minute)."]
    lines += ["", f"Regenerate: `python benchmarks/fslm_repro/run.py --scale {recipe.scale}` (resumes; finished steps are skipped)."]
    labelled = [(systems[n]["label"], s) for n, s in summaries.items()]
    write_atomic(out / "results.png", chart_png(labelled))
    write_atomic(out / "RESULTS.md", "\n".join(lines) + "\n")
    log(f"  wrote {out / 'RESULTS.md'}")
    return out / "RESULTS.md"
