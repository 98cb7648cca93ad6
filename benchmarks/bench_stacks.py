"""Stacks against their base model: the cost side (timed here) and benchmarks/results/stacks/summary.json.

`time`: the base model alone and a stack evaluated one after the other in this process, on the same engine and the
same first N items of each multiple-choice task (only this process on the machine: a second busy process on 2 cores
distorts every number), written as timing.json with the CPU and its flags. The accuracy side comes from the
experiment `benchmarks/experiments/stacks.yaml` (`fslm experiment run`), whose test-item comparison of the packaged
default with its base this script reads.

`summary`: summary.json with exactly the keys other tools read; a measurement not made yet is null (said in
summary.md), never a guess.

    python benchmarks/bench_stacks.py time --engine hf --limit 10
    python benchmarks/bench_stacks.py time --engine llamacpp --limit 10
    python benchmarks/bench_stacks.py summary
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fslm.evaluate import evaluate
from fslm.evaluate.systems import load_system
from fslm.io import write_atomic, write_json

OUT = Path(__file__).parent / "results" / "stacks"
MC_TASKS = [
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "mmlu",
    "truthfulqa_mc1",
    "truthfulqa_mc2",
    "winogrande",
    "piqa",
    "boolq",
    "openbookqa",
]


def time_systems(stack: str, engine: str, limit: int, tasks: list[str]) -> dict:
    """Seconds per item of the base model alone and of the stack, the same items, one after the other."""
    from bench_engine import cpu_facts  # run as a script: benchmarks/ is on sys.path

    out: dict = {"stack": stack, "engine": engine, "limit_per_task": limit, "tasks": tasks, "cpu": cpu_facts()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, system in (
            ("base", lambda: load_system(stack=stack, base=True, backend=engine)),
            ("stack", lambda: load_system(stack=stack, backend=engine)),
        ):
            t0 = time.perf_counter()
            loaded = system()
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = evaluate(loaded, tasks, limit, out_dir=Path(tmp) / name).data
            wall = time.perf_counter() - t0
            n = summary["n_items"]
            out[name] = {
                "system": summary["system"],
                "items": n,
                "load_seconds": round(load_s, 2),
                "wall_seconds": round(wall, 2),
                "seconds_per_item": round(wall / n, 4),
                "macro_acc": summary["macro_acc"],
            }
    out["seconds_ratio"] = round(out["stack"]["seconds_per_item"] / out["base"]["seconds_per_item"], 3)
    return out


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def build_summary(results: Path) -> dict:
    """summary.json from what is measured under `results`; a missing measurement is null."""
    compare = _read(results / "compare" / "default-vs-base" / "compare.json")
    timing = _read(results / "timing-hf.json")
    generative = _read(results / "generative" / "summary.json")
    default = None
    if compare is not None:
        macro = compare["tasks"]["macro"]
        default = {
            "macro": round(macro["a"], 4),
            "base_macro": round(macro["b"], 4),
            "delta_ci95": [round(x, 4) for x in macro["ci95"]],
            "seconds_ratio": timing["seconds_ratio"] if timing else None,
        }
    gen = None
    if generative is not None:
        pair = generative.get("pairs", {}).get("default-vs-base")
        if pair is not None:
            gen = {"win_rate_vs_base": pair["win_rate"], "ci95": pair["ci95"]}
    gsm8k = _read(results / "gsm8k" / "compare-vs-base" / "compare.json")
    tool = None
    if gsm8k is not None:
        g = gsm8k["tasks"]["gsm8k"]
        tool = {"acc": round(g["a"], 4), "base_acc": round(g["b"], 4), "delta_ci95": [round(x, 4) for x in g["ci95"]]}
    cascade = _read(results / "escalate" / "cascade.json")
    escalate = None
    if cascade is not None:  # equal items per task (fslm eval --limit), so the item mean is the macro
        at = cascade["calibrated"]
        escalate = {
            "large_macro": round(cascade["large_acc"], 4),
            "macro": round(at["acc"], 4),
            "compute_share": round(at["compute_share"], 4),
        }
    return {
        "default": default,
        "best": best_stack(results, default),
        "escalate": escalate,
        "gsm8k_tool": tool,
        "generative": gen,
    }


def best_stack(results: Path, default: dict | None) -> dict | None:
    """The best stack on one SmolLM2-135M base: the held-out winner among the stacks under select/ (never chosen on
    test items), reported with its test comparison against the base (compare/<name>-vs-base)."""
    held = {}
    for path in sorted((results / "select").glob("*/summary.json")):
        summary = _read(path)
        if summary and summary.get("kind") == "stack":
            held[path.parent.name] = summary["macro_acc"]
    if not held:
        return None
    name = max(held, key=held.get)
    if name == "default":
        return None if default is None else {"name": name, **default}
    compare = _read(results / "compare" / f"{name}-vs-base" / "compare.json")
    if compare is None:
        return None
    macro = compare["tasks"]["macro"]
    timing = _read(results / f"timing-hf-{name}.json")
    return {
        "name": name,
        "macro": round(macro["a"], 4),
        "base_macro": round(macro["b"], 4),
        "delta_ci95": [round(x, 4) for x in macro["ci95"]],
        "seconds_ratio": timing["seconds_ratio"] if timing else None,
    }


def summary_markdown(summary: dict) -> str:
    lines = [
        "# Stacks: machine-readable summary",
        "",
        "`summary.json` (accuracies as fractions, CIs of the difference).",
        "",
    ]
    for key, value in summary.items():
        lines.append(f"- `{key}`: " + (json.dumps(value) if value is not None else "not measured yet (null)"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time", help="time the base model and a stack on the same items")
    t.add_argument("--stack", default="default")
    t.add_argument("--engine", default="hf", choices=["hf", "llamacpp"])
    t.add_argument("--limit", type=int, default=10)
    t.add_argument("--out", type=Path, default=OUT)
    s = sub.add_parser("summary", help="write summary.json and summary.md from the measured results")
    s.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.cmd == "time":
        if args.limit < 1:
            print("error: --limit must be >= 1", file=sys.stderr)
            return 2
        result = time_systems(args.stack, args.engine, args.limit, MC_TASKS)
        suffix = "" if args.stack == "default" else f"-{Path(args.stack).stem}"  # best_stack reads timing-hf-<name>
        write_json(args.out / f"timing-{args.engine}{suffix}.json", result)
        print(json.dumps({k: result[k] for k in ("engine", "seconds_ratio")} | {"cpu": result["cpu"].get("model")}))
        return 0
    summary = build_summary(args.out)
    write_json(args.out / "summary.json", summary)
    write_atomic(args.out / "summary.md", summary_markdown(summary))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
