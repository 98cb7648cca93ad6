"""Multiple-choice evaluation throughput: `fslm eval` (llama.cpp and HF engines) vs lm-eval's HF backend, one run.

    FSLM_THREADS=2 python benchmarks/bench_eval_speed.py              # run alone on a quiet machine
    python benchmarks/bench_eval_speed.py --limit 4 --tasks arc_easy --out /tmp/evalspeed   # check the script

The same items (fslm's shipped lm-eval task YAMLs read exactly the items `fslm eval` scores, in the same order), the
same model weights (lm-eval's `HFLM` is handed the transformers model fslm loaded), the same thread count. Model
loading is outside every timed span. Reported per system: wall seconds, items/s, loglikelihood requests/s, accuracy
per task (fslm-HF and lm-eval must agree: the same numbers by two code paths), and the ratios to lm-eval.

Both HF sides run in float32 and in bfloat16 (each lm-eval run next to fslm's on the same weights); the llama.cpp
engine runs its 4-bit GGUF. Writes --out (default benchmarks/results/engine/): eval_speed.json and eval_speed.md;
`eval_vs_lmeval` in summary.json is updated when that file exists (`headline`: the best same-precision ratio).
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


FSLM_ROWS = ("fslm_hf", "fslm_hf_bf16", "fslm_llamacpp")


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
    hf_bf16 = HFEngine.from_ref(args.model, dtype="bfloat16")
    fast = LlamaCppEngine.from_ref(args.model, threads=args.threads)
    facts = cpu_facts()
    print(f"cpu: {cpu_label(facts)}; {len(tasks)} tasks x {args.limit} items", flush=True)
    results: dict = {"cpu": facts, "threads": args.threads, "limit": args.limit, "tasks": tasks}
    # Each lm-eval run next to fslm's on the same weights, fp32 then bf16, so drift hits both alike.
    steps = [
        ("lm_eval_hf", lambda: run_lm_eval(hf.base, hf.tokenizer, tasks, args.limit, args.batch_size)),
        ("fslm_hf", lambda: run_fslm(hf, tasks, args.limit, args.batch_size)),
        ("lm_eval_hf_bf16", lambda: run_lm_eval(hf_bf16.base, hf_bf16.tokenizer, tasks, args.limit, args.batch_size)),
        ("fslm_hf_bf16", lambda: run_fslm(hf_bf16, tasks, args.limit, args.batch_size)),
        ("fslm_llamacpp", lambda: run_fslm(fast, tasks, args.limit, args.batch_size)),
    ]
    for key, step in steps:
        print(f"{key} ...", flush=True)
        results[key] = step()
        print(f"  {results[key]['seconds']} s", flush=True)
    items = results["fslm_hf"]["items"]
    for key, _ in steps:
        results[key]["items_per_s"] = round(items / results[key]["seconds"], 3)
    rate = {key: results[key]["items_per_s"] for key, _ in steps}
    results["ratios_vs_lm_eval"] = {k: round(rate[k] / rate["lm_eval_hf"], 3) for k in FSLM_ROWS}
    results["ratios_same_dtype"] = {
        "fslm_hf": round(rate["fslm_hf"] / rate["lm_eval_hf"], 3),
        "fslm_hf_bf16": round(rate["fslm_hf_bf16"] / rate["lm_eval_hf_bf16"], 3),
    }
    for ours, theirs in (("fslm_hf", "lm_eval_hf"), ("fslm_hf_bf16", "lm_eval_hf_bf16")):
        results[f"{ours}_equals_lm_eval"] = {
            t: abs(results[ours]["acc"][t] - results[theirs]["acc"][t]) < 1e-9 for t in tasks
        }
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    labels = {
        "lm_eval_hf": "lm-eval, HF backend, float32",
        "lm_eval_hf_bf16": "lm-eval, HF backend, bfloat16",
        "fslm_hf": "fslm eval, HF engine, float32",
        "fslm_hf_bf16": "fslm eval, HF engine, bfloat16",
        "fslm_llamacpp": f"fslm eval, llama.cpp engine ({fast.weight_format})",
    }
    same = {"fslm_hf": "float32", "fslm_hf_bf16": "bfloat16"}
    lines = [
        "# Multiple-choice evaluation throughput",
        "",
        f"CPU: {cpu_label(facts)}; flags: {', '.join(facts.get('flags', []))}; {args.threads} threads; "
        f"{len(tasks)} tasks x {args.limit} items = {items} items; model {args.model}; load time excluded.",
        "",
        "| system | seconds | items/s | vs lm-eval HF float32 | vs lm-eval HF, same dtype |",
        "|---|---|---|---|---|",
    ]
    for key, _ in steps:
        r = results[key]
        ratio = results["ratios_vs_lm_eval"].get(key, 1.0 if key == "lm_eval_hf" else None)
        cells = [f"{ratio:.2f}x" if ratio is not None else "", ""]
        if key in same:
            cells[1] = f"{results['ratios_same_dtype'][key]:.2f}x ({same[key]})"
        lines.append(f"| {labels[key]} | {r['seconds']} | {r['items_per_s']} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "| task | " + " | ".join(labels[k] + " acc" for k, _ in steps) + " |",
        "|---" * (len(steps) + 1) + "|",
    ]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(f"{results[k]['acc'][t]:.3f}" for k, _ in steps) + " |")
    (args.out / "eval_speed.md").write_text("\n".join(lines) + "\n")
    summary_path = args.out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["eval_vs_lmeval"] = headline(results)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"vs_fp32": results["ratios_vs_lm_eval"], "same_dtype": results["ratios_same_dtype"]}), flush=True)
    return 0


def headline(results: dict) -> float:
    """summary.json's eval_vs_lmeval: fslm's fastest configuration over lm-eval at the same precision where lm-eval
    runs it (HF fp32 over lm-eval fp32, HF bf16 over lm-eval bf16); llama.cpp's 4-bit weights over lm-eval fp32, the
    reference the other engine goals use."""
    return max(*results["ratios_same_dtype"].values(), results["ratios_vs_lm_eval"]["fslm_llamacpp"])


if __name__ == "__main__":
    raise SystemExit(main())
