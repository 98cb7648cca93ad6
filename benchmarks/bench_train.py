"""LoRA training speed (naive vs optimized) and the distill -> finetune -> run end-to-end timing, on the real model.

speed: trains the SAME LoRA init on the SAME real Alpaca examples with three settings, one step of each in turn
(interleaved, so a busy shared CPU slows all three alike):
  naive      fp32, random batches padded to the longest, full-vocabulary logits, torch's default threads
  optimized  fslm's defaults: length bucketing, target-only logits, bf16 autocast where the CPU has native bf16,
             threads picked from the load average (fslm/cpu.py)
  naive+thr  naive, but with fslm's thread choice (separates the thread gain from the algorithmic gain)
and reports train tokens/s (real, non-pad tokens per second of step time) and the final loss of each (one shared
fp32 evaluation over all examples).

e2e: `fslm distill --limit N` with the embedded teacher, `fslm finetune` of all stages, `fslm run` of the trained
stack, each timed as a CLI subprocess; rerunning resumes whatever was done.

Usage: python benchmarks/bench_train.py speed [--examples 64 --epochs 2 --batch-size 8 --max-length 384]
       python benchmarks/bench_train.py e2e [--records 200] [--workdir DIR]
Results: benchmarks/results/train/{speed.json,speed.md,speed.png,e2e.json,e2e.md,e2e_loss.png}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train"


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# ---- speed -----------------------------------------------------------------------------------------------------------
def speed_examples(engine, n: int, max_length: int):
    """Real Alpaca examples at the default stack's first-stage input -> the gold output (real length spread)."""
    from fslm.config import load_default_stack_config
    from fslm.finetune.examples import Example
    from fslm.stack import Stack
    from fslm.tasks.instructions import load_instructions

    cfg = load_default_stack_config().without_adapters()
    stack = Stack(cfg, engine)
    items, _ = load_instructions(None)
    eos = engine.tokenizer.eos_token_id
    out = []
    for item in items:
        if item.gold is None:
            continue
        ex = Example(
            item.id,
            tuple(engine.encode(stack.stage_input(0, item.prompt, {}))),
            tuple(engine.encode(item.gold)) + (eos,),
        )
        if ex.length <= max_length:
            out.append(ex)
        if len(out) == n:
            return out
    return out


def run_speed(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from fslm.cpu import apply_threads
    from fslm.engine import load_engine
    from fslm.finetune.trainer import TrainOptions, batch_loss, lr_at, mean_loss, plan_batches, use_bf16

    default_threads = torch.get_num_threads()
    engine = load_engine("smollm2-135m")
    examples = speed_examples(engine, args.examples, args.max_length)
    pad = engine.tokenizer.pad_token_id
    common = dict(batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, max_length=args.max_length)
    configs = {
        "naive": TrainOptions(
            **common, bucketing=False, precision="fp32", target_logits_only=False, auto_threads=False
        ),
        "naive+thr": TrainOptions(**common, bucketing=False, precision="fp32", target_logits_only=False),
        "optimized": TrainOptions(**common),
    }
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(TrainOptions().targets), task_type="CAUSAL_LM"
    )
    torch.manual_seed(0)
    model = get_peft_model(engine.base, lora, adapter_name="naive")
    for name in list(configs)[1:]:
        model.add_adapter(name, lora)
    init = {k.replace(".naive.", ".{}."): v.detach().clone() for k, v in model.named_parameters() if ".naive." in k}
    with torch.no_grad():  # identical starting weights for all three
        params = dict(model.named_parameters())
        for name in list(configs)[1:]:
            for key, value in init.items():
                params[key.format(name)].copy_(value)
    model.set_adapter("naive")
    apply_threads()  # evaluations are not timed; use the fast setting for them
    loss_before = mean_loss(model, examples, pad, TrainOptions(precision="fp32"))
    optimizers = {
        name: torch.optim.AdamW(
            [p for k, p in model.named_parameters() if f".{name}." in k], lr=args.lr, weight_decay=0.0
        )
        for name in configs
    }
    per_epoch = -(-len(examples) // args.batch_size)
    total = per_epoch * args.epochs
    logs: dict[str, list[dict]] = {name: [] for name in configs}
    for epoch in range(args.epochs):
        plans = {name: plan_batches(examples, opt, epoch) for name, opt in configs.items()}
        for position in range(per_epoch):
            step = epoch * per_epoch + position
            for name, opt in configs.items():
                model.set_adapter(name)
                model.train()
                threads = (
                    apply_threads(opt.threads, busy=True) if (opt.auto_threads or opt.threads) else default_threads
                )
                torch.set_num_threads(threads)
                optimizer = optimizers[name]
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, opt)
                batch = [examples[i] for i in plans[name][position]]
                t0 = time.perf_counter()
                loss, tokens, _ = batch_loss(model, batch, pad, opt, use_bf16(opt))
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in optimizer.param_groups[0]["params"]], 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - t0
                logs[name].append(
                    {
                        "step": step + 1,
                        "loss": round(float(loss.detach()), 5),
                        "tokens": tokens,
                        "padded_tokens": len(batch) * max(e.length for e in batch),
                        "seconds": round(seconds, 3),
                        "threads": threads,
                        "load_avg": round(os.getloadavg()[0], 2),
                    }
                )
                print(
                    f"step {step + 1}/{total} {name:10s} loss {float(loss):.3f} {tokens / seconds:7.1f} tok/s ({threads} thr)",
                    flush=True,
                )
    eval_threads = apply_threads()
    result = {
        "machine": machine(),
        "examples": len(examples),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "lr": args.lr,
        "loss_before": round(loss_before, 4),
        "bf16_used": use_bf16(configs["optimized"]),
        "eval_threads": eval_threads,
        "configs": {},
    }
    for name, steps in logs.items():
        model.set_adapter(name)
        busy = sum(s["seconds"] for s in steps)
        tokens = sum(s["tokens"] for s in steps)
        result["configs"][name] = {
            "tokens_per_s": round(tokens / busy, 1),
            "seconds": round(busy, 1),
            "tokens": tokens,
            "padding_share": round(1 - tokens / sum(s["padded_tokens"] for s in steps), 3),
            "final_loss": round(mean_loss(model, examples, pad, TrainOptions(precision="fp32")), 4),
            "threads_used": sorted({s["threads"] for s in steps}),
            "steps": steps,
        }
    base = result["configs"]["naive"]["tokens_per_s"]
    for entry in result["configs"].values():
        entry["speedup_vs_naive"] = round(entry["tokens_per_s"] / base, 2)
    result["algorithmic_speedup_same_threads"] = round(
        result["configs"]["optimized"]["tokens_per_s"] / result["configs"]["naive+thr"]["tokens_per_s"], 2
    )
    return result


def write_speed(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = [
        "# LoRA training speed, SmolLM2-135M (r=16, 7 projections), same data and init, steps interleaved",
        "",
        f"{result['examples']} real Alpaca examples (default stack's first-stage input -> gold output, <= {result['max_length']} tokens), "
        f"batch {result['batch_size']}, {result['epochs']} epochs; {m['cpus']} CPUs, load average at the end {m['load_avg']} "
        f"(shared machine), torch {m['torch']}; bf16 autocast used: {result['bf16_used']}. Loss before training: {result['loss_before']}.",
        "",
        "| config | train tok/s | speedup vs naive | padding share | threads | step time (s) | final loss (fp32 eval) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in result["configs"].items():
        lines.append(
            f"| {name} | {c['tokens_per_s']} | {c['speedup_vs_naive']}x | {c['padding_share']:.1%} | "
            f"{','.join(map(str, c['threads_used']))} | {c['seconds']} | {c['final_loss']} |"
        )
    lines += [
        "",
        f"optimized vs naive+thr (bucketing + target-only logits + bf16 where native, same thread choice): "
        f"{result['algorithmic_speedup_same_threads']}x",
    ]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(result["configs"])
    a.bar(names, [result["configs"][n]["tokens_per_s"] for n in names], color=["#999", "#79b", "#2a7"])
    a.set_ylabel("train tokens/s")
    a.set_title("throughput (same run, interleaved)")
    for n in names:
        b.plot(
            [s["step"] for s in result["configs"][n]["steps"]],
            [s["loss"] for s in result["configs"][n]["steps"]],
            label=n,
        )
    b.set_xlabel("step")
    b.set_ylabel("batch loss")
    b.legend()
    b.set_title("training loss")
    fig.tight_layout()
    fig.savefig(RESULTS / "speed.png", dpi=110)


# ---- end to end ------------------------------------------------------------------------------------------------------
def timed(cmd: list[str], log: Path) -> tuple[float, float, dict | None]:
    """Run a CLI step; returns (wall seconds, child CPU seconds, its --json report)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("a") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {done.returncode}; see {log}")
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return round(wall, 1), round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1), report


def run_e2e(args) -> dict:
    fslm = [sys.executable, "-c", "from fslm.cli import main; main()"]
    from fslm.settings import get_settings

    work = Path(args.workdir) if args.workdir else get_settings().cache_dir / "e2e-train"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "e2e.log"
    result: dict = {"machine_start": machine(), "records": args.records, "workdir": str(work), "phases": {}}
    distilled, trained = work / "distilled.jsonl", work / "stack"
    wall, cpu, report = timed(fslm + ["distill", "--limit", str(args.records), "--out", str(distilled), "--json"], log)
    result["phases"]["distill"] = {"wall_s": wall, "cpu_s": cpu, "report": report}
    wall, cpu, report = timed(
        fslm + ["finetune", "--data", str(distilled), "--out", str(trained), "--json"] + args.finetune_args, log
    )
    result["phases"]["finetune"] = {"wall_s": wall, "cpu_s": cpu, "report": report}
    from fslm.tasks.instructions import load_instructions

    held_out = [i for i in load_instructions(None, limit=args.records + 40)[0][args.records :] if i.gold][:4]
    wall, cpu, report = timed(fslm + ["run", "--stack", str(trained / "stack.yaml"), "--json", held_out[0].prompt], log)
    result["phases"]["run"] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "answer": report["answer"] if report else None,
        "trace": [{k: r[k] for k in ("stage", "output", "adapter")} for r in (report or {}).get("trace", [])],
    }
    result["total_wall_s"] = round(sum(p["wall_s"] for p in result["phases"].values()), 1)
    result["total_cpu_s"] = round(sum(p["cpu_s"] for p in result["phases"].values()), 1)
    result["machine_end"] = machine()
    (work / "e2e.partial.json").write_text(
        json.dumps(result, indent=1, ensure_ascii=False)
    )  # the timings survive a kill below
    result["examples"] = compare_outputs(trained / "stack.yaml", held_out)
    if (trained / "loss.png").is_file():
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / "loss.png", RESULTS / "e2e_loss.png")
    return result


def compare_outputs(trained_stack: Path, items) -> list[dict]:
    """Held-out Alpaca prompts through the untrained default stack and the trained one (not part of the timing)."""
    from fslm.cpu import apply_threads
    from fslm.stack import Stack

    apply_threads()  # torch's default 2 threads crawl when other processes share the cores (see fslm/cpu.py)
    tuned = Stack.load(trained_stack)
    base = Stack.load(None, engine=tuned.engine)  # same weights, adapters off (the default stack names none)
    rows = []
    for item, b, t in zip(items, base.run_batch([i.prompt for i in items]), tuned.run_batch([i.prompt for i in items])):
        rows.append({"prompt": item.prompt, "gold": item.gold, "base": b.outputs, "trained": t.outputs})
    return rows


def write_e2e(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    d, f = result["phases"]["distill"], result["phases"]["finetune"]
    lines = [
        f"# End to end: distill {result['records']} Alpaca records -> finetune every stage -> run (embedded SmolLM2 as teacher and student)",
        "",
        f"CPUs {result['machine_start']['cpus']}, load average at start {result['machine_start']['load_avg']}, at end "
        f"{result['machine_end']['load_avg']} (shared machine: CPU seconds show the work independent of other users).",
        "",
        "| phase | wall (s) | CPU (s) | notes |",
        "|---|---|---|---|",
        f"| distill | {d['wall_s']} | {d['cpu_s']} | kept {d['report']['kept']} of {d['report']['records']}; filtered {d['report']['filtered']} |",
    ]
    for name, s in (f["report"] or {}).get("stages", {}).items():
        lines.append(
            f"| finetune {name} | {s['seconds']} | | {s['examples']} examples, {s['steps']} steps, loss {s['first_loss']} -> "
            f"{s['final_loss']}, {s['tokens_per_second']} tok/s |"
        )
    lines += [
        f"| finetune (total, incl. model load) | {f['wall_s']} | {f['cpu_s']} | |",
        f"| run trained stack (1 prompt, incl. model load) | {result['phases']['run']['wall_s']} | {result['phases']['run']['cpu_s']} | |",
        f"| **total** | **{result['total_wall_s']}** ({result['total_wall_s'] / 60:.1f} min) | {result['total_cpu_s']} | |",
    ]
    (RESULTS / "e2e.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--examples", type=int, default=64)
    speed.add_argument("--epochs", type=int, default=2)
    speed.add_argument("--batch-size", type=int, default=8)
    speed.add_argument("--max-length", type=int, default=384)
    speed.add_argument("--lr", type=float, default=5e-4)
    e2e = sub.add_parser("e2e")
    e2e.add_argument("--records", type=int, default=200)
    e2e.add_argument("--workdir", default=None, help="default: $FSLM_CACHE_DIR/e2e-train")
    e2e.add_argument("finetune_args", nargs="*", help="extra `fslm finetune` options after --")
    args = parser.parse_args()
    if args.mode == "speed":
        write_speed(run_speed(args))
        print((RESULTS / "speed.md").read_text())
    else:
        write_e2e(run_e2e(args))
        print((RESULTS / "e2e.md").read_text())


if __name__ == "__main__":
    main()
