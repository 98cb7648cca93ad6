"""Peak memory of one LoRA training step: micro-batch budget x gradient checkpointing, on a real model.

Each setting trains the same choice-level step (the hard-label baseline of `fslm finetune --kd-level choice`: the
same questions, options and LoRA init) in a fresh subprocess, so its peak resident set size (ru_maxrss from wait4)
is that setting's alone. A subprocess that only loads the model gives the floor the training adds to. Step seconds
come from the run's own train log; on a shared CPU they compare settings of the same run only.

Usage: python benchmarks/bench_train_memory.py [--model qwen2.5-coder-0.5b] [--questions 16]
           [--budgets 1024,4096,none]
Results: benchmarks/results/train/memory.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train"
TASKS = "arc_challenge,mmlu,openbookqa"

STEP = """
import json, sys
from fslm.config import StackConfig
from fslm.finetune import TrainOptions, finetune_choice_kd
model, out, budget, recompute, questions = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
cfg = StackConfig.model_validate({"name": "bench", "base_model": model,
    "stages": [{"name": "answer", "label": "Answer", "score": {"format": "raw"}, "final": True}]})
options = TrainOptions(rank=4, alpha=8, epochs=1, batch_size=questions, max_length=1024, threads=2, kd_level="choice",
    max_batch_tokens=None if budget == "none" else int(budget), gradient_checkpointing=recompute)
finetune_choice_kd(cfg, "answer", out, options, tasks=sys.argv[6].split(","), questions=questions)
log = json.load(open(out + "/train_log.json"))["stages"]["answer"]
print(json.dumps({"step": log["steps"][0], "precision": log["summary"]["precision"]}))
"""

LOAD = """
import sys
from fslm.engine import load_engine
load_engine(sys.argv[1], dtype="float32")
"""


def peak_rss_mb(cmd: list[str]) -> tuple[float, str]:
    """Run `cmd`; its peak RSS in MB (Linux reports ru_maxrss in KiB) and its stdout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]}... failed with status {status}")
    return round(usage.ru_maxrss / 1024, 1), out


def run(args) -> dict:
    import torch

    flags = sorted(f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx2", "avx512", "amx")))
    floor, _ = peak_rss_mb([sys.executable, "-c", LOAD, args.model])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets.split(","):
            for recompute in (False, True):
                out = f"{tmp}/{budget}-{int(recompute)}"
                cmd = [sys.executable, "-c", STEP, args.model, out, budget, "1" if recompute else "0"]
                peak, stdout = peak_rss_mb([*cmd, str(args.questions), TASKS])
                step = json.loads(stdout.strip().splitlines()[-1])
                rows.append(
                    {
                        "max_batch_tokens": None if budget == "none" else int(budget),
                        "gradient_checkpointing": recompute,
                        "peak_rss_mb": peak,
                        "over_load_mb": round(peak - floor, 1),
                        "step_seconds": step["step"]["seconds"],
                        "tokens": step["step"]["tokens"],
                        "loss": step["step"]["loss"],
                        "precision": step["precision"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return {
        "model": args.model,
        "questions": args.questions,
        "tasks": TASKS,
        "load_only_rss_mb": floor,
        "cpu_flags": sorted(set(flags)),
        "cpus": os.cpu_count(),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "rows": rows,
    }


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Peak memory of one LoRA training step, {result['model']}",
        "",
        f"One choice-level step on {result['questions']} questions of {result['tasks']} (rank 4, every projection), "
        f"each setting in a fresh process; the model alone loads to {result['load_only_rss_mb']} MB. "
        f"{result['cpus']} CPUs, load average at the end {result['load_avg_end']}, torch {result['torch']}; "
        f"CPU flags: {' '.join(result['cpu_flags'])}.",
        "",
        "| max_batch_tokens | gradient checkpointing | peak RSS (MB) | above the loaded model (MB) | step s | loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['max_batch_tokens'] or 'none'} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{r['peak_rss_mb']} | {r['over_load_mb']} | {r['step_seconds']} | {r['loss']} |"
        )
    rows = result["rows"]
    pairs = [(a, b) for a in rows for b in rows if a["max_batch_tokens"] == b["max_batch_tokens"] and a is not b]
    same = all(a["loss"] == b["loss"] for a, b in pairs)
    spread = max(r["loss"] for r in rows) - min(r["loss"] for r in rows)
    lines += [
        "",
        f"Gradient checkpointing {'left the loss unchanged' if same else 'changed the loss'} at every budget; across "
        f"budgets the loss differs by at most {spread:.5f} (bf16 autocast over other padding widths).",
    ]
    (RESULTS / "memory.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    labels = [
        f"{r['max_batch_tokens'] or 'none'}\n{'ckpt' if r['gradient_checkpointing'] else 'plain'}"
        for r in result["rows"]
    ]
    colors = ["#2a7" if r["gradient_checkpointing"] else "#79b" for r in result["rows"]]
    ax.bar(labels, [r["over_load_mb"] / 1024 for r in result["rows"]], color=colors)
    ax.set_ylabel("peak RSS above the loaded model (GB)")
    ax.set_xlabel("max_batch_tokens / gradient checkpointing")
    ax.set_title(f"one training step, {result['model']}")
    fig.tight_layout()
    fig.savefig(RESULTS / "memory.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--budgets", default="1024,4096,none", help="comma-separated; none = one pass per batch")
    write(run(parser.parse_args()))
    print((RESULTS / "memory.md").read_text())


if __name__ == "__main__":
    main()
