"""Step `timing`: every evaluated system timed again on the same few test items, one after another, in one session.

timing -> <out>/timing/<system>/ (fslm.evaluate; the first --timing-limit test items per task, no stage cache, the
          same torch threads for all) + <out>/timing.json (seconds per item, ratio to the base model, CPU, load)

Why: the full runs take many sessions, and sessions can land on different machines (this run's did: one without
native bf16, then one with AMX, ~1.75x faster on the same fp32 work). Their seconds per item are then not comparable
between systems, let alone as ratios. Timing all systems on one machine, with the same threads, is; the full runs'
own seconds stay in their run.json. The stage cache is off here: a cached stage output would cost nothing.

An interrupted step resumes: a system timed to the end is kept when the CPU model, the thread count and the setup are
the same, and an unfinished one is timed again from its first item (never a mix of two sessions within one system).
timing.json records when each system was timed and which ones an earlier attempt timed (`resumed`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from eval_step import evaluate_system, expected_items, run_complete, systems
from lanes import threads_env
from recipe import Recipe, read_json, utc_now

from fslm.cpu import cpu_model, pick_threads
from fslm.evaluate import parse_tasks, select_items
from fslm.evaluate.store import write_json


def timing_dir(recipe: Recipe) -> Path:
    return recipe.out / "timing"


def timed_systems(recipe: Recipe) -> list:
    """The systems with a complete full run: the ones RESULTS.md reports."""
    expected = expected_items(recipe)
    return [s for s in systems(recipe) if run_complete(recipe.runs_dir / s.name, expected)]


def _setup(recipe: Recipe, names: list[str]) -> dict:
    return {"systems": names, "limit": recipe.timing_limit, "tasks": parse_tasks(recipe.tasks)}


def done(recipe: Recipe) -> bool:
    data = read_json(recipe.out / "timing.json")
    names = [s.name for s in timed_systems(recipe)]
    return data is not None and data.get("setup") == _setup(recipe, names)


def run(recipe: Recipe, log=print) -> dict:
    specs = timed_systems(recipe)
    if not specs:
        log("  no system has a complete run yet: nothing to time")
        return {}
    # Measured into a work folder that replaces the old set only when every system is timed: a stopped step leaves the
    # previous complete set in place, and its finished systems for the next attempt on the same machine.
    tmp = timing_dir(recipe).with_name(".timing.tmp")
    threads = pick_threads()  # fixed once: every system runs with the same threads, whatever the load does meanwhile
    n_items = sum(len(select_items(t, recipe.timing_limit)) for t in parse_tasks(recipe.tasks))
    conditions = {"setup": _setup(recipe, [s.name for s in specs]), "cpu": cpu_model(), "threads": threads}
    kept = _resumable(tmp, conditions, n_items)
    started = utc_now()
    with threads_env(threads):
        for spec in specs:
            if spec.name in kept:
                log(f"  {spec.name}: timed already on this CPU with {threads} thread(s); kept")
                continue
            shutil.rmtree(
                tmp / spec.name, ignore_errors=True
            )  # an unfinished timing restarts: its seconds are one sitting's
            log(f"  {spec.name}: timing {recipe.timing_limit} items per task ({n_items} items, {threads} thread(s))")
            evaluate_system(
                spec, recipe.tasks, recipe.timing_limit, tmp / spec.name, recipe.eval_batch, recipe.isolate_eval
            )
    rows = {spec.name: _row(tmp / spec.name) for spec in specs}
    base = rows.get("base", {}).get("seconds_per_item")
    for row in rows.values():
        row["x_base"] = round(row["seconds_per_item"] / base, 2) if base else None
    data = {
        "setup": conditions["setup"],
        "started": started,
        "cpu": conditions["cpu"],
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "items_per_system": n_items,
        "resumed": sorted(kept),
        "systems": rows,
    }
    (tmp / CONDITIONS).unlink(missing_ok=True)
    shutil.rmtree(timing_dir(recipe), ignore_errors=True)
    tmp.rename(timing_dir(recipe))
    write_json(recipe.out / "timing.json", data)
    return data


CONDITIONS = "conditions.json"


def _resumable(tmp: Path, conditions: dict, n_items: int) -> set[str]:
    """The systems a stopped timing finished under the same conditions; anything else in the work folder is wiped."""
    if read_json(tmp / CONDITIONS) != conditions:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_json(tmp / CONDITIONS, conditions)
        return set()
    return {name for name in conditions["setup"]["systems"] if run_complete(tmp / name, n_items)}


def _row(folder: Path) -> dict:
    summary = read_json(folder / "summary.json") or {}
    cost, session = summary.get("cost", {}), (summary.get("sessions") or [{}])[-1]
    return {
        "seconds_per_item": cost.get("seconds_per_item"),
        "generated_tokens_per_item": cost.get("generated_tokens_per_item"),
        "peak_rss_mb": cost.get("peak_rss_mb"),
        "load_seconds": cost.get("load_seconds"),
        "timed_at": session.get("started"),
        "loadavg_start": session.get("loadavg_start"),
        "loadavg_end": session.get("loadavg_end"),
    }


__all__ = ["done", "run", "timed_systems", "timing_dir"]
