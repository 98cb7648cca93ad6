"""`run.py --status`: where a long run stands, read from its files only (safe beside a running recipe).

Per step: done, to do, or off (a step this scale turns off). Per run folder of the baselines, select and eval steps: items written,
items expected, whether a process is writing it now, its measured seconds per item and the hours left at that rate.
The distill step reports records written of those selected. Nothing is loaded or computed: seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from recipe import STEPS, Recipe, read_json

from fslm.evaluate.store import folder_busy, read_rows

RECENT_RECORDS = 64  # the distill rate shown: these last records' teacher seconds (the load changes over a long run)


@dataclass(frozen=True)
class RunStatus:
    step: str  # baselines | select | eval
    system: str
    folder: str
    items: int
    expected: int
    busy: bool  # a process holds the folder's lock right now
    seconds_per_item: float | None  # wall seconds / items over the folder's sessions so far

    @property
    def hours_left(self) -> float | None:
        if self.seconds_per_item is None:
            return None
        return round(max(0, self.expected - self.items) * self.seconds_per_item / 3600, 2)


def _rate(folder: Path) -> float | None:
    sessions = (read_json(folder / "run.json") or {}).get("sessions", [])
    wall = sum(s.get("wall_seconds", 0.0) for s in sessions)
    items = sum(s.get("items_evaluated", 0) for s in sessions)
    return round(wall / items, 3) if items else None


def runs(recipe: Recipe) -> list[RunStatus]:
    import baselines_step
    import eval_step
    import select_step

    jobs = [("baselines", j) for j in baselines_step.jobs(recipe)]
    seen = {j.folder for _, j in jobs}
    if recipe.select_limit:
        attempts, context = select_step.candidates(recipe)
        jobs += [("select", j) for j in select_step.jobs(recipe, attempts + context) if j.folder not in seen]
    seen |= {j.folder for _, j in jobs}
    jobs += [("eval", j) for j in eval_step.eval_jobs(recipe) if j.folder not in seen]
    return [
        RunStatus(
            step,
            j.spec.name,
            str(j.folder.relative_to(recipe.out)),
            min(len(read_rows(j.folder)), j.expected),
            j.expected,
            folder_busy(j.folder),
            _rate(j.folder),
        )
        for step, j in jobs
    ]


def status(recipe: Recipe) -> dict:
    """Python twin of `run.py --status`."""
    import pipeline
    from run import STEP_FUNCS

    from fslm.distill import load_instructions, read_distilled

    path = pipeline.distilled_path(recipe)
    wanted = {it.id for it in load_instructions(recipe.data, recipe.distill_records)[0]}
    records = [r for r in read_distilled(path) if r["id"] in wanted] if path.is_file() else []
    written = len(records)
    recent = [r["seconds"]["total"] for r in records[-RECENT_RECORDS:] if (r.get("seconds") or {}).get("total")]
    per_record = sum(recent) / len(recent) if recent else None
    rows = runs(recipe)
    return {
        "steps": {
            name: "off" if name in recipe.steps_off else ("done" if STEP_FUNCS[name][0](recipe) else "to do")
            for name in STEPS
        },
        "distill": {
            "written": written,
            "selected": len(wanted),
            "teacher_seconds_per_record": round(per_record, 2) if per_record else None,
            "hours_left": round((len(wanted) - written) * per_record / 3600, 2) if per_record else None,
        },
        "runs": [{**asdict(r), "hours_left": r.hours_left} for r in rows],
        "hours_left_measured": round(sum(r.hours_left or 0 for r in rows), 1),
        "runs_not_started": sum(1 for r in rows if r.items == 0),
    }


def _distill_rate(d: dict) -> str:
    if d.get("teacher_seconds_per_record") is None:
        return ""
    return (
        f", {d['teacher_seconds_per_record']:.2f} s/record of teacher time over the last {RECENT_RECORDS} "
        f"(the load of that moment), {d['hours_left']:.2f} h left at that rate"
    )


def render(data: dict) -> str:
    """A plain-text table (the CLI prints it; `--json` gives the dict)."""
    lines = [
        "steps: " + "  ".join(f"{k} {v}" for k, v in data["steps"].items()),
        f"distill: {data['distill']['written']}/{data['distill']['selected']} records" + _distill_rate(data["distill"]),
        "",
        f"{'step':<10} {'system':<34} {'items':>11} {'s/item':>7} {'h left':>7}",
    ]
    for r in data["runs"]:
        rate = f"{r['seconds_per_item']:.2f}" if r["seconds_per_item"] is not None else "—"
        left = f"{r['hours_left']:.2f}" if r["hours_left"] is not None else "—"
        mark = " *" if r["busy"] else ""
        lines.append(
            f"{r['step']:<10} {r['system'][:34]:<34} {r['items']:>5}/{r['expected']:<5} {rate:>7} {left:>7}{mark}"
        )
    lines += [
        "",
        f"* being written now; hours left at measured rates: {data['hours_left_measured']} "
        f"(+ {data['runs_not_started']} runs not started)",
    ]
    return "\n".join(lines)
