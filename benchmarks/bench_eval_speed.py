"""Multiple-choice evaluation throughput: `fslm eval` (llama.cpp and HF engines) vs lm-eval's HF backend, one run.

    FSLM_THREADS=2 python benchmarks/bench_eval_speed.py              # run alone on a quiet machine
    python benchmarks/bench_eval_speed.py --limit 4 --tasks arc_easy --out /tmp/evalspeed   # check the script

The same items (fslm's shipped lm-eval task YAMLs read exactly the items `fslm eval` scores, in the same order), the
same model weights (lm-eval's `HFLM` is handed the transformers model fslm loaded), the same thread count. Model
loading is outside every timed span. Reported per system: wall seconds, items/s, loglikelihood requests/s, accuracy
per task (fslm-HF and lm-eval must agree: the same numbers by two code paths), and the ratios to lm-eval.

Writes --out (default benchmarks/results/engine/): eval_speed.json and eval_speed.md; `eval_vs_lmeval` in
summary.json is updated when that file exists (the llama.cpp engine's items/s over lm-eval's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MC_TASKS = "arc_easy,arc_challenge,boolq,hellaswag,mmlu,openbookqa,piqa,truthfulqa_mc1,truthfulqa_mc2,winogrande"


def run_lm_eval(model, tokenizer, tasks: list[str], limit: int, batch_size: int) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from fslm.evaluate.harness import TASK_PREFIX, tasks_dir

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK_PREFIX + t for t in tasks], limit=limit, task_manager=manager, bootstrap_iters=0
    )
    seconds = time.perf_counter() - t0
    acc = {t: round(out["results"][TASK_PREFIX + t]["acc,none"], 6) for t in tasks}
    return {"seconds": round(seconds, 2), "acc": acc}


def run_fslm(engine, tasks: list[str], limit: int, batch_size: int) -> dict:
    from fslm.evaluate import evaluate
    from fslm.evaluate.systems import ModelSystem

    system = ModelSystem(engine)
    calls0 = engine.stats.calls
    t0 = time.perf_counter()
    summary = evaluate(system, tasks, limit, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    acc = {t: round(summary.tasks[t]["acc"], 6) for t in tasks}
    n = sum(summary.tasks[t]["n"] for t in tasks)
    return {"seconds": round(seconds, 2), "acc": acc, "items": n, "engine_calls": engine.stats.calls - calls0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default=MC_TASKS)
    ap.add_argument("--limit", type=int, default=50, help="items per task")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="fslm's items per batch and lm-eval's batch size")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine")
    args = ap.parse_args(argv)
    os.environ["FSLM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))

    import torch

    torch.set_num_threads(args.threads)
    from bench_engine import cpu_facts, cpu_label

    from fslm.engine.hf import HFEngine
    from fslm.engine.llamacpp import LlamaCppEngine
    from fslm.evaluate import parse_tasks

    tasks = parse_tasks(args.tasks)
    hf = HFEngine.from_ref(args.model)
    fast = LlamaCppEngine.from_ref(args.model, threads=args.threads)
    facts = cpu_facts()
    print(f"cpu: {cpu_label(facts)}; {len(tasks)} tasks x {args.limit} items", flush=True)
    results: dict = {"cpu": facts, "threads": args.threads, "limit": args.limit, "tasks": tasks}
    print("lm-eval (HF backend) ...", flush=True)
    results["lm_eval_hf"] = run_lm_eval(hf.base, hf.tokenizer, tasks, args.limit, args.batch_size)
    print(f"  {results['lm_eval_hf']['seconds']} s", flush=True)
    for key, engine in (("fslm_llamacpp", fast), ("fslm_hf", hf)):
        print(f"{key} ...", flush=True)
        results[key] = run_fslm(engine, tasks, args.limit, args.batch_size)
        print(f"  {results[key]['seconds']} s", flush=True)
    items = results["fslm_hf"]["items"]
    for key in ("lm_eval_hf", "fslm_llamacpp", "fslm_hf"):
        results[key]["items_per_s"] = round(items / results[key]["seconds"], 3)
    base = results["lm_eval_hf"]["items_per_s"]
    results["ratios_vs_lm_eval"] = {k: round(results[k]["items_per_s"] / base, 3) for k in ("fslm_llamacpp", "fslm_hf")}
    results["fslm_hf_equals_lm_eval"] = {
        t: abs(results["fslm_hf"]["acc"][t] - results["lm_eval_hf"]["acc"][t]) < 1e-9 for t in tasks
    }
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Multiple-choice evaluation throughput",
        "",
        f"CPU: {cpu_label(facts)}; flags: {', '.join(facts.get('flags', []))}; {args.threads} threads; "
        f"{len(tasks)} tasks x {args.limit} items = {items} items; model {args.model}; load time excluded.",
        "",
        "| system | seconds | items/s | vs lm-eval HF |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("lm_eval_hf", "lm-eval, HF backend"),
        ("fslm_hf", "fslm eval, HF engine"),
        ("fslm_llamacpp", f"fslm eval, llama.cpp engine ({fast.weight_format})"),
    ):
        r = results[key]
        ratio = results["ratios_vs_lm_eval"].get(key, 1.0)
        lines.append(f"| {label} | {r['seconds']} | {r['items_per_s']} | {ratio:.2f}x |")
    lines += ["", "| task | lm-eval HF acc | fslm HF acc | fslm llama.cpp acc |", "|---|---|---|---|"]
    for t in tasks:
        lines.append(
            f"| {t} | {results['lm_eval_hf']['acc'][t]:.3f} | {results['fslm_hf']['acc'][t]:.3f} | "
            f"{results['fslm_llamacpp']['acc'][t]:.3f} |"
        )
    (args.out / "eval_speed.md").write_text("\n".join(lines) + "\n")
    summary_path = args.out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["eval_vs_lmeval"] = results["ratios_vs_lm_eval"]["fslm_llamacpp"]
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(results["ratios_vs_lm_eval"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
