"""Step `teachers`: every candidate teacher distills the same records; measure speed and quality, choose by a rule.

Quality signals (neither rewards a teacher for writing more or for flattering itself):
- kept rate: the share of the records that reached the teacher whose texts pass every distill filter (empty,
  too long, stop string, incomplete, loops, answer leaks) — the records the student could actually learn from;
- gold gain: how much the teacher's intermediate texts raise the UNTRAINED student's log-probability of the gold
  answer (nats per token, answer-stage input with the texts minus the prompt-only input), on the kept records.
Speed: generated tokens per second and projected hours for the distill step's record count.

Rule: drop candidates projected over the time budget (if all are over, keep the fastest); take the highest kept
rate; among those within 10 points of it, the highest gold gain; then the fastest. `--teacher` overrides.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Sequence

from recipe import Recipe, read_json, slug

from fslm.config import StackConfig, keep_stages
from fslm.cpu import current_threads
from fslm.distill import DistillOptions, distill, distill_identity, read_distilled
from fslm.distill.store import identity_path
from fslm.engine import GenerationParams, load_engine
from fslm.errors import ConfigError, FslmError
from fslm.evaluate.store import write_atomic, write_json
from fslm.stack import Stack
from fslm.teachers import LocalTeacher, TeacherReply

TIE_POINTS = 0.10
SHOW_RECORDS = 2  # texts per candidate printed in teachers.md (all are in teachers/<candidate>.jsonl)


class CountingTeacher:
    """Wraps a teacher to count generated tokens and generation wall time (the distill API stays unchanged)."""

    def __init__(self, inner):
        self.inner, self.id = inner, inner.id
        self.tokens_out, self.seconds, self.calls = 0, 0.0, 0

    def generate(self, requests, params: GenerationParams) -> list[TeacherReply]:
        t0 = time.perf_counter()
        replies = self.inner.generate(requests, params)
        self.seconds += time.perf_counter() - t0
        self.tokens_out += sum(r.tokens_out or 0 for r in replies)
        self.calls += len(requests)
        return replies

    def close(self) -> None:
        self.inner.close()


def gold_gain(cfg: StackConfig, records: Sequence[dict]) -> tuple[float | None, int]:
    """Mean over kept hinted records of logp(gold | answer input with the teacher's texts) - logp(gold | prompt only),
    per gold token, under the untrained student. (None, 0) when no record qualifies."""
    usable = [r for r in records if r.get("kept") and r.get("hinted") and r.get("gold")]
    if not usable:
        return None, 0
    final = cfg.stages[-1].name
    engine = load_engine(cfg.base_model, dtype="float32")
    full, alone = Stack(cfg, engine), Stack(keep_stages(cfg, [final]), engine)
    with_texts = [full.stage_input(len(cfg.stages) - 1, r["prompt"], r["targets"]) for r in usable]
    without = [alone.stage_input(0, r["prompt"], {}) for r in usable]
    golds = [r["gold"] for r in usable]
    a = engine.score(with_texts, golds)
    b = engine.score(without, golds)
    gains = [(x.logprob - y.logprob) / max(x.n_tokens, 1) for x, y in zip(a, b, strict=True)]
    del engine, full, alone
    gc.collect()
    return round(sum(gains) / len(gains), 4), len(gains)


def measure_options(recipe: Recipe) -> DistillOptions:
    return DistillOptions(limit=recipe.teacher_records, batch_size=recipe.distill_batch)


def setup(recipe: Recipe, cfg: StackConfig) -> dict:
    """What a measurement depends on; a saved row measured under another setup (say, older teacher prompts) is stale."""
    return {
        "distill": distill_identity(cfg, measure_options(recipe)),
        "records": recipe.teacher_records,
        "dtype": recipe.teacher_dtype,
        "batch": recipe.distill_batch,
        "data": recipe.data,
    }


def measure(recipe: Recipe, cfg: StackConfig, ref: str) -> dict:
    """Distill `teacher_records` records with one candidate; returns its row (also saved, so a rerun with the same
    setup skips it)."""
    folder = recipe.work / "teachers"
    result_path, texts = folder / f"{slug(ref)}.json", folder / f"{slug(ref)}.jsonl"
    wanted = setup(recipe, cfg)
    done = read_json(result_path)
    if done is not None and done.get("setup") == wanted:
        return done
    for stale in (texts, identity_path(texts)):  # half-measured or stale: measured again from scratch (clean timing)
        stale.unlink(missing_ok=True)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        teacher = CountingTeacher(LocalTeacher.load(ref, dtype=recipe.teacher_dtype))
    except FslmError as err:  # not installed here: reported, never chosen, measured again on a rerun
        return {"teacher": ref, "error": str(err).splitlines()[0]}
    load_seconds = time.perf_counter() - t0
    report = distill(cfg, recipe.data, texts, teacher=teacher, options=measure_options(recipe))
    params = int(getattr(teacher.inner.engine, "params", 0))
    del teacher.inner
    gc.collect()
    records = read_distilled(texts)
    asked = [
        r
        for r in records
        if r.get("targets") and not any(f.startswith(f"{cfg.stages[-1].name}:") for f in r["filtered"])
    ]
    gain, gain_n = gold_gain(cfg, records)
    per_record = report.seconds / max(len(asked), 1)
    row = {
        "teacher": ref,
        "params": params,
        "dtype": recipe.teacher_dtype,
        "records": report.records,
        "asked": len(asked),
        "kept": report.kept,
        "kept_rate": round(report.kept / len(asked), 4) if asked else 0.0,
        "filtered": report.filtered,
        "tokens_out": teacher.tokens_out,
        "tokens_per_second": round(teacher.tokens_out / teacher.seconds, 2) if teacher.seconds else 0.0,
        "seconds": round(report.seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "seconds_per_asked_record": round(per_record, 3),
        "projected_distill_hours": round(per_record * recipe.distill_records / 3600, 2),
        "gold_gain_nats_per_token": gain,
        "gold_gain_n": gain_n,
        "setup": wanted,
        # Speed decides feasibility: a busy machine makes a teacher look slower (rerun after deleting its row).
        "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "threads": current_threads(),
    }
    write_json(result_path, row)
    return row


def choose(rows: Sequence[dict], budget_hours: float) -> tuple[dict, str]:
    """The stated rule (module docstring). Returns the chosen row and a one-line reason."""
    rows = [r for r in rows if "error" not in r]
    if not rows:
        raise ConfigError("no teacher candidate could be loaded (see teachers.md); install one or give --teacher REF")
    feasible = [r for r in rows if r["projected_distill_hours"] <= budget_hours]
    note = ""
    if not feasible:
        feasible = [min(rows, key=lambda r: r["projected_distill_hours"])]
        note = f" (every candidate is projected over {budget_hours} h; the fastest was kept)"
    best = max(r["kept_rate"] for r in feasible)
    tied = [r for r in feasible if r["kept_rate"] >= best - TIE_POINTS - 1e-9]
    tied.sort(
        key=lambda r: (
            -(r["gold_gain_nats_per_token"] if r["gold_gain_nats_per_token"] is not None else float("-inf")),
            r["projected_distill_hours"],
        )
    )
    chosen = tied[0]
    reason = (
        f"{chosen['teacher']}: kept rate {chosen['kept_rate']:.0%} (best feasible {best:.0%}; {len(tied)} within "
        f"{TIE_POINTS:.0%}), gold gain {chosen['gold_gain_nats_per_token']}, projected {chosen['projected_distill_hours']} h "
        f"<= budget {budget_hours} h{note}"
    )
    return chosen, reason


def busy_while_measured(row: dict) -> bool:
    """Other work was running beside the measurement (rows from before loads were recorded: unknown, False)."""
    return bool(row.get("loadavg")) and max(row["loadavg"]) > row.get("threads", 1) + 0.5


def markdown(rows: Sequence[dict], chosen: str, reason: str, texts: dict[str, list[dict]], cfg: StackConfig) -> str:
    lines = [
        "# Teacher candidates",
        "",
        "Each candidate distilled the same records (answer-hinted, the stack's teacher prompts). kept rate = records "
        "whose texts pass every distill filter / records that reached the teacher; gold gain = how much the teacher's "
        "texts raise the untrained student's log-probability of the gold answer (nats/token, kept records).",
        "",
        "| teacher | params | tok/s | s/record | projected distill h | asked | kept | kept rate | gold gain (n) | top filters | load avg (start, end) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['teacher']} | not available: {r['error'][:120]} ||||||||||")
            continue
        top = ", ".join(f"{k} {v}" for k, v in sorted(r["filtered"].items(), key=lambda kv: -kv[1])[:3]) or "-"
        gain = (
            "-"
            if r["gold_gain_nats_per_token"] is None
            else f"{r['gold_gain_nats_per_token']:+.3f} ({r['gold_gain_n']})"
        )
        lines.append(
            f"| {r['teacher']} | {r['params'] / 1e6:.0f}M | {r['tokens_per_second']:.1f} | {r['seconds_per_asked_record']:.1f} | "
            f"{r['projected_distill_hours']:.2f} | {r['asked']} | {r['kept']} | {r['kept_rate']:.0%} | {gain} | {top} | "
            f"{', '.join(map(str, r['loadavg'])) if r.get('loadavg') else '—'} |"
        )
    busy = [r["teacher"] for r in rows if busy_while_measured(r)]
    if busy:
        lines += [
            "",
            f"**Measured on a busy machine** (load average above its torch threads + 0.5): {', '.join(busy)}. "
            "Their speed is understated; delete their rows under the work dir's `teachers/` and rerun to measure again.",
        ]
    lines += ["", f"**Chosen: {chosen}** — {reason}", "", "Rule: " + " ".join(__doc__.split("Rule:")[1].split()), ""]
    for ref, records in texts.items():
        lines += [f"## {ref}: first {len(records)} records that reached the teacher", ""]
        for rec in records:
            lines.append(f"**Prompt:** {rec['prompt'][:300]}  ")
            lines.append(f"**Gold:** {(rec.get('gold') or '')[:300]}  ")
            for stage in cfg.stages[:-1]:
                lines.append(f"**{stage.name}:** {rec['targets'].get(stage.name, '')[:400]}  ")
            lines.append(f"filters: {', '.join(rec['filtered']) or 'passed'}")
            lines.append("")
    return "\n".join(lines) + "\n"


def committed(recipe: Recipe) -> bool:
    """The distill step has already used teachers.json's choice (its records name that teacher). The choice then
    stands even if the rows were measured under an older setup: measuring again could change it and pull the
    distilled data, and everything trained on it, out from under the later steps."""
    from pipeline import distilled_path  # pipeline imports this module

    data = read_json(recipe.out / "teachers.json")
    path = distilled_path(recipe)
    if data is None or not path.is_file():
        return False
    records = read_distilled(path)
    return bool(records) and records[0].get("teacher") == f"local:{data['chosen']}"


def done(recipe: Recipe) -> bool:
    data = read_json(recipe.out / "teachers.json")
    wanted = setup(recipe, recipe.stack_config())
    if (
        data is not None
        and [r["teacher"] for r in data["candidates"]] == list(recipe.teacher_candidates)
        and committed(recipe)
    ):
        return True
    return (
        data is not None
        and [r["teacher"] for r in data["candidates"]] == list(recipe.teacher_candidates)
        and all("error" not in r and r.get("setup") == wanted for r in data["candidates"])
    )


def run(recipe: Recipe, log=print) -> dict:
    cfg = recipe.stack_config()
    rows = []
    for ref in recipe.teacher_candidates:
        log(f"  teacher {ref}: distilling {recipe.teacher_records} records")
        rows.append(measure(recipe, cfg, ref))
    chosen, reason = choose(rows, recipe.budget_hours)
    shown: dict[str, list[dict]] = {}
    (recipe.out / "teachers").mkdir(parents=True, exist_ok=True)
    for ref in [r["teacher"] for r in rows if "error" not in r]:
        src = recipe.work / "teachers" / f"{slug(ref)}.jsonl"
        shutil.copyfile(src, recipe.out / "teachers" / src.name)  # small; kept with the results for reading
        shown[ref] = [r for r in read_distilled(src) if r.get("targets") and len(r["targets"]) > 1][:SHOW_RECORDS]
    data = {"candidates": rows, "chosen": chosen["teacher"], "reason": reason, "budget_hours": recipe.budget_hours}
    write_atomic(recipe.out / "teachers.md", markdown(rows, chosen["teacher"], reason, shown, cfg))
    write_json(recipe.out / "teachers.json", data)
    return data


def chosen_teacher(recipe: Recipe) -> str:
    if recipe.teacher:
        return recipe.teacher
    data = read_json(recipe.out / "teachers.json")
    if data is None:
        raise ConfigError(f"no {recipe.out / 'teachers.json'}: run the 'teachers' step first or give --teacher REF")
    return data["chosen"]


__all__ = ["CountingTeacher", "choose", "chosen_teacher", "committed", "done", "gold_gain", "measure", "run"]
