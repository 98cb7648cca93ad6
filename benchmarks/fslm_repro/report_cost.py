"""RESULTS.md's cost and wall-time tables: params, tokens, seconds (timed together when the `timing` step has run),
peak RSS, and each recipe step's wall time with the CPUs it ran on."""

from __future__ import annotations

from pathlib import Path

from recipe import STEPS, Recipe, read_json


def cost_section(summaries: dict, systems: dict, run_of: dict, timing: dict | None) -> list[str]:
    """Params and tokens from the full runs; seconds from the timing step when it has timed these systems: the full
    runs span sessions and machines, so only seconds measured together compare systems."""
    timed = (timing or {}).get("systems", {})
    lines = [
        "## Cost",
        "",
        "| system | params touched | generated tokens/item | s/item, timed together | x base | "
        "s/item, full run | CPU s, full run | peak RSS MB | threads | stage outputs reused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summaries.items():
        c, t = s["cost"], timed.get(name, {})
        threads, reused = run_conditions(run_of[name])
        lines.append(
            f"| {systems[name]['label']} | {s['params_touched'] / 1e6:.1f}M | {c['generated_tokens_per_item']} | "
            f"{t.get('seconds_per_item', '—')} | {t.get('x_base') or '—'} | {c['seconds_per_item']} | "
            f"{c.get('cpu_seconds')} | {c['peak_rss_mb']} | {threads} | {reused} |"
        )
    if timing:
        loads = [r["loadavg_start"][0] for r in timed.values() if r.get("loadavg_start")]
        when = f"one after another in one session ({timing['started']})"
        if timing.get("resumed"):  # older timing.json files have no such field: they were always one session
            days = sorted({r["timed_at"] for r in timed.values() if r.get("timed_at")})
            when = (
                f"one after another, resumed once stopped ({', '.join(timing['resumed'])} timed by an earlier attempt on "
                f"the same CPU and threads; from {days[0]} to {days[-1]})"
            )
        lines += [
            "",
            f"Timed together: the `timing` step ran every system on the same {timing['items_per_system']} test items "
            f"({timing['setup']['limit']} per task), {when}, on "
            f"{timing['cpu']} with {timing['threads']} torch thread(s) each and no stage cache; 1-min load average "
            f"at each start {min(loads, default=0)}–{max(loads, default=0)} ({timing['cpu_count']} cores). "
            "x base is that s/item over the base model's.",
        ]
    else:
        lines += [
            "",
            "No `timing` step yet: the full runs' seconds above may come from different sessions and machines.",
        ]
    lines += [
        "",
        "s/item, full run: the mean of the items' measured seconds (each item's share of its batch's time), over the "
        "full run's sessions on a shared 2-core CPU (each run's run.json has the "
        "load average and, since session 9, the CPU of every session); CPU s is process CPU time; threads: torch "
        "threads of the evaluating process. Stage outputs reused: the share of this system's stage generations "
        "found in the recipe's stage cache (asked identically by a system evaluated before it, or generated ahead of "
        "this run by the other lane: warm_cache.py); their tokens and "
        "seconds count at the cost measured when they were generated, so s/item and tokens describe the system "
        "as configured, while CPU s is what this run spent.",
        "",
    ]
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


def wall_time_section(recipe: Recipe, steps: dict) -> list[str]:
    lines = [
        "## Wall time per step",
        "",
        "| step | status | wall time | sessions that worked | CPUs of the sessions that worked |",
        "|---|---|---:|---:|---|",
    ]
    for step, e in sorted(steps.items(), key=lambda kv: STEPS.index(kv[0]) if kv[0] in STEPS else len(STEPS)):
        worked = sum(s.get("status") != "skipped" for s in e["sessions"])  # not every rerun that found it done
        lines.append(
            f"| {step} | {'off' if step in recipe.steps_off else e['status']} | {_fmt_hms(e['wall_seconds'])} | {worked} | {step_cpus(e['sessions'])} |"
        )
    return lines + [
        "",
        "The report step's own row shows it running: its time is logged in steps.json after this file is written. "
        "interrupted: a session that stopped without logging its end (killed, or its machine went away); its "
        "time counts up to its last heartbeat (once a minute).",
    ]


__all__ = ["cost_section", "run_conditions", "step_cpus", "wall_time_section"]
