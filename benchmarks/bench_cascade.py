"""Cascade and router on real benchmark items: small model first, large model only when needed.

    .venv/bin/python benchmarks/bench_cascade.py [--small smollm2-135m] [--large qwen2.5-coder-0.5b] \
        [--large-dtype bfloat16] [--tasks arc_easy,boolq,piqa] [--limit 200] [--target 0.95] [--suffix _1.5b]

Steps (each resumable; runs and signals are cached under --work):
1. `fslm eval` (Python API) of both models on the first --limit items of each task;
2. self-verification signal of the small model on its own answers (`fslm cascade signals`);
3. a stable hash split of the items into a calibration half and a report half (none of these tasks has a dev split
   in the data), written as two pairs of run folders, so the CLI twins run on them exactly as a user would;
4. cascade calibration (margin and verify) on the calibration half, curves and baselines on the report half;
5. router trained on the calibration half, compared with random routing and the cascade on the report half.
Outputs: benchmarks/results/collaborate/{cascade,router}.{json,md,png} (+ the router itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fslm.collaborate.cascade import (  # noqa: E402
    SIGNALS,
    always,
    by_task,
    calibrate,
    cascade_point,
    curve,
    evaluate,
    load_pairs,
    plot_curves,
    random_escalation,
)
from fslm.collaborate.live import verify_signal_rows  # noqa: E402
from fslm.collaborate.route import eval_runs, train_runs  # noqa: E402
from fslm.collaborate.runs import read_run, split_pairs  # noqa: E402
from fslm.io import write_atomic, write_json, write_jsonl  # noqa: E402
from fslm.settings import get_settings  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def eval_runs_for(model: str, tasks: list[str], limit: int, folder: Path, dtype: str = "float32") -> Path:
    from fslm.evaluate import evaluate, load_system

    log(f"fslm eval {model} ({dtype}) on {tasks} (limit {limit}) -> {folder}")
    summary = evaluate(load_system(model=model, dtype=dtype), tasks, limit=limit, out_dir=folder)
    log(f"  {model}: " + ", ".join(f"{t} {v['acc']:.3f}" for t, v in summary.tasks.items()))
    return folder


def verify_signals(small: str, run: Path, path: Path) -> Path:
    if path.is_file() and sum(1 for _ in path.open()) == len(read_run(run).rows):
        return path
    from fslm.engine import load_engine
    from fslm.tasks import load_task

    rows = read_run(run).rows
    engine = load_engine(small)
    items = [it for t in sorted({r["task"] for r in rows}) for it in load_task(t)]
    log(f"self-verification of {len(rows)} small answers by {small}")
    write_jsonl(path, verify_signal_rows(engine, items, rows))
    return path


def write_subset(run: Path, keys: set[tuple[str, str]], folder: Path) -> Path:
    rows = [r for r in read_run(run).rows if (r["task"], r["id"]) in keys]
    write_jsonl(folder / "items.jsonl", rows)
    shutil.copy(run / "summary.json", folder / "summary.json")  # parameter counts for the cost model
    return folder


def per_task(pairs, signal: str, threshold: float) -> dict:
    out = {}
    for task, group in sorted(by_task(pairs).items()):
        at = cascade_point(group, signal, threshold)
        out[task] = {
            "n": len(group),
            "small_acc": round(always(group, "small").acc, 4),
            "large_acc": round(always(group, "large").acc, 4),
            **{k: round(v, 4) for k, v in at.to_dict().items()},
        }
    return out


TARGETS = (0.9, 0.95, 0.98, 1.0)


def router_by_target(calib, report) -> list[dict]:
    """Router, random routing and margin cascade, each tuned on the calibration half for several quality targets."""
    from fslm.collaborate.route import compare, embed, embed_costs, train_router

    emb_cal, emb_rep = embed([p.prompt for p in calib]), embed([p.prompt for p in report])
    cost_cal, cost_rep = embed_costs(emb_cal, "flops"), embed_costs(emb_rep, "flops")
    rows = []
    for target in TARGETS:
        router = train_router(calib, emb_cal, cost_cal, target=target)
        casc = cascade_point(report, "margin", calibrate(calib, "margin", target).threshold)
        rep = compare(report, router, emb_rep, cost_rep, casc)
        rows.append({"target": target, **{k: rep[k] for k in ("router", "random", "cascade")}})
    return rows


def router_markdown(rep: dict) -> str:
    from fslm.collaborate.route import markdown as base

    lines = [
        base(rep),
        "Each policy tuned on the calibration half for a target share of the large model's accuracy:",
        "",
        "| target | router acc | router share | random acc | random share | cascade acc | cascade share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rep["by_target"]:
        lines.append(
            f"| {r['target']:.0%} | {r['router']['acc']:.3f} | {r['router']['compute_share']:.3f} | {r['random']['acc']:.3f} | "
            f"{r['random']['compute_share']:.3f} | {r['cascade']['acc']:.3f} | {r['cascade']['compute_share']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    lines = [
        f"# Cascade: {result['small']} -> {result['large']}",
        "",
        f"Report items: {result['n']} ({', '.join(result['tasks'])}; first {result['limit']} per task, the hash-split half "
        f"not used for calibration). Threshold calibrated on {result['n_calibration']} other items for >= "
        f"{result['target']:.0%} of the large model's accuracy. Compute share = (small FLOPs on every item + signal FLOPs "
        "+ large FLOPs on escalated items) / large FLOPs on every item, FLOPs = 2 x params x tokens.",
        "",
        "| policy | accuracy | compute share | escalated |",
        "|---|---|---|---|",
    ]
    first = result["signals"][SIGNALS[0]]
    lines.append(
        f"| always small | {first['always_small']['acc']:.3f} | {first['always_small']['compute_share']:.3f} | 0% |"
    )
    lines.append(f"| always large | {first['always_large']['acc']:.3f} | 1.000 | 100% |")
    for name, rep in result["signals"].items():
        c, r = rep["calibrated"], rep["random_same_rate"]
        lines.append(
            f"| cascade, {name} < {c['threshold']:.3f} | {c['acc']:.3f} | {c['compute_share']:.3f} | {c['escalation_rate']:.1%} |"
        )
        lines.append(
            f"| random escalation at {name}'s rate | {r['acc']:.3f} | {r['compute_share']:.3f} | {r['escalation_rate']:.1%} |"
        )
    lines += [
        "",
        "Per task at the calibrated margin threshold:",
        "",
        "| task | n | small | large | cascade | compute share | escalated |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, t in result["per_task"].items():
        lines.append(
            f"| {task} | {t['n']} | {t['small_acc']:.3f} | {t['large_acc']:.3f} | {t['acc']:.3f} | {t['compute_share']:.3f} | {t['escalation_rate']:.1%} |"
        )
    lines += [
        "",
        "Thresholds calibrated for other targets (calibration half), measured on the report half:",
        "",
        "| target | signal | threshold | accuracy | compute share | escalated | random escalation acc, same rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["by_target"]:
        for signal in SIGNALS:
            p = row[signal]
            lines.append(
                f"| {row['target']:.0%} | {signal} | {p['threshold']:.3f} | {p['acc']:.3f} | {p['compute_share']:.3f} | "
                f"{p['escalation_rate']:.1%} | {p['random_same_rate_acc']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", default="smollm2-135m")
    ap.add_argument("--large", default="qwen2.5-coder-0.5b")
    ap.add_argument("--tasks", default="arc_easy,boolq,piqa")
    ap.add_argument("--large-dtype", default="float32", help="bfloat16 makes a 1.5B model affordable here")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--work", type=Path, default=get_settings().cache_dir / "bench" / "collaborate")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "collaborate")
    ap.add_argument("--suffix", default="", help="appended to output names (e.g. _1.5b for another large model)")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    work = args.work
    small_run = eval_runs_for(args.small, tasks, args.limit, work / "runs" / args.small)
    large_name = args.large if args.large_dtype == "float32" else f"{args.large}-{args.large_dtype}"
    large_run = eval_runs_for(args.large, tasks, args.limit, work / "runs" / large_name, args.large_dtype)
    signals = verify_signals(args.small, small_run, work / "runs" / f"{args.small}-{args.limit}-verify.jsonl")

    pairs = load_pairs(small_run, large_run, signals)
    calib, report = split_pairs(pairs)
    split_dir = work / f"split-{args.small}-{large_name}-{args.limit}"
    for name, part in (("calib", calib), ("report", report)):
        keys = {(p.task, p.id) for p in part}
        write_subset(small_run, keys, split_dir / name / "small")
        write_subset(large_run, keys, split_dir / name / "large")
    log(f"{len(pairs)} paired items: {len(calib)} for calibration, {len(report)} for the report")

    result = {
        "small": args.small,
        "large": args.large,
        "large_dtype": args.large_dtype,
        "tasks": tasks,
        "limit": args.limit,
        "target": args.target,
        "n_calibration": len(calib),
        "cost_unit": "flops",
        "signals": {},
    }
    calibrations = {}
    for signal in SIGNALS:
        cal = calibrate(calib, signal, args.target)
        calibrations[signal] = cal
        cal.save(split_dir / f"calibration-{signal}.json")
        result["signals"][signal] = evaluate(report, cal)
        log(
            f"cascade[{signal}]: threshold {cal.threshold:.4f} -> report acc {result['signals'][signal]['calibrated']['acc']:.4f} "
            f"at share {result['signals'][signal]['calibrated']['compute_share']:.4f}"
        )
    # Other quality targets (same calibration half, same report half): where the target bites depends on how much
    # better the large model is.
    result["by_target"] = []
    for target in TARGETS:
        row = {"target": target}
        for signal in SIGNALS:
            cal = calibrate(calib, signal, target)
            at = cascade_point(report, signal, cal.threshold)
            row[signal] = {
                **at.to_dict(),
                "random_same_rate_acc": round(random_escalation(report, at.escalation_rate).acc, 6),
            }
        result["by_target"].append(row)
    main_rep = result["signals"]["margin"]
    # The schema at the top level (margin signal), the rest alongside.
    cascade_json = {
        "large_acc": main_rep["large_acc"],
        "small_acc": main_rep["small_acc"],
        "points": main_rep["points"],
        "n": main_rep["n"],
        "signal": "margin",
        **result,
        "per_task": per_task(report, "margin", calibrations["margin"].threshold),
    }
    out = args.out
    write_json(out / f"cascade{args.suffix}.json", cascade_json)
    write_atomic(out / f"cascade{args.suffix}.md", markdown(cascade_json))
    curves = {f"cascade ({s})": curve(report, s) for s in SIGNALS}
    curves["random escalation"] = [random_escalation(report, r / 20) for r in range(21)]
    markers = {"always small": always(report, "small"), "always large": always(report, "large")}
    markers.update({f"calibrated ({s})": cascade_point(report, s, calibrations[s].threshold) for s in SIGNALS})
    plot_curves(
        out / f"cascade{args.suffix}.png", curves, markers, f"{args.small} -> {args.large}, {len(report)} report items"
    )

    log("router: train on the calibration half, evaluate on the report half")
    router_dir = out / f"router{args.suffix}"
    train_runs(split_dir / "calib" / "small", split_dir / "calib" / "large", router_dir, target=args.target)
    # eval_runs writes router.{json,md,png}; with a suffix it writes them to a scratch folder first, so the
    # unsuffixed results of another configuration are never overwritten.
    report_dir = out if not args.suffix else args.work / f"router-report{args.suffix}"
    rep = eval_runs(
        router_dir,
        split_dir / "report" / "small",
        split_dir / "report" / "large",
        calibration=split_dir / "calibration-margin.json",
        out_dir=report_dir,
    )
    rep["by_target"] = router_by_target(calib, report)
    write_json(out / f"router{args.suffix}.json", rep)
    write_atomic(out / f"router{args.suffix}.md", router_markdown(rep))
    if args.suffix:
        os.replace(report_dir / "router.png", out / f"router{args.suffix}.png")
    log("router: " + json.dumps({k: rep[k] for k in ("router", "random", "cascade")}))
    log("done")


if __name__ == "__main__":
    main()
