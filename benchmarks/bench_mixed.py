"""Rows of different stages in one batch (`generate_mixed`) vs one `generate` call per stage, on the real default stack.

The default stack's free-form stages (facts -> reasoning -> answer, each its own LoRA adapter and token cap) are run
once on N real prompts to get every stage's real input. Then the three stages' rows are generated two ways on the
same HF engine: one call per stage (one adapter per call, stage-head KV reuse on), and one `generate_mixed` call
(each adapter's rows prefill apart with their stage-head reuse, then one decode loop with PEFT's per-row
`adapter_names`). That is the work of a wave of independent stages, or of requests that sit at different stages. Each
setting is timed `--repeats` times (median), interleaved; texts are compared. A second table times one decode step
(a 40-token context) at several batch sizes under one adapter and under three adapters per row: the price of PEFT's
per-row path against the weight streaming it shares.

Usage: python benchmarks/bench_mixed.py [--prompts 1,2,4,8] [--repeats 3]
Results: benchmarks/results/engine/mixed.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "engine"


def stage_rows(engine, n: int) -> list[tuple[str, object, str | None]]:
    """(input, params, adapter) of every free-form default stage on the first n alpaca seed instructions."""
    from fslm.config import load_default_stack_config
    from fslm.settings import get_settings
    from fslm.stack import Stack

    seeds = (get_settings().data_dir / "alpaca" / "seed_tasks.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["instruction"] for line in seeds[:n]]
    stack = Stack(load_default_stack_config(), engine)
    rows = []
    for result in stack.run_batch(prompts):
        for rec in result.trace:
            if rec.kind == "generate":
                rows.append((rec.input, stack.params_for(stack.config.stage(rec.stage)), rec.adapter))
    return rows


def separate(engine, rows) -> list[str]:
    """One `generate` per (params, adapter): the per-stage calls."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, params, adapter) in enumerate(rows):
        groups.setdefault((params, adapter), []).append(i)
    texts: list[str] = [""] * len(rows)
    for (params, adapter), members in groups.items():
        for i, gen in zip(members, engine.generate([rows[i][0] for i in members], params, adapter=adapter)):
            texts[i] = gen.text
    return texts


def step_ms(engine, batch: int, names: list[str] | None, steps: int = 30, row_lora: bool = False) -> float:
    """Milliseconds of one decode step at `batch` rows: one adapter active (names None) or per-row adapters, through
    PEFT's `adapter_names` or fslm's RowLoRA (fslm/engine/rowlora.py)."""
    import contextlib

    import torch

    from fslm.engine.rowlora import RowLoRA

    ids = torch.tensor([engine.encode("Hello there, how are you doing today? " * 4)] * batch)
    extra = {} if names is None or row_lora else {"adapter_names": names}
    with contextlib.ExitStack() as stack, torch.inference_mode():
        model = stack.enter_context(engine.hf_model("facts"))
        if row_lora:
            stack.enter_context(RowLoRA.build(model, sorted(names)))
        cache = model(input_ids=ids, use_cache=True, **extra).past_key_values
        token = torch.full((batch, 1), 5)
        t0 = time.perf_counter()
        for _ in range(steps):
            cache = model(input_ids=token, past_key_values=cache, use_cache=True, **extra).past_key_values
    return (time.perf_counter() - t0) / steps * 1000


def run(args) -> dict:
    import torch

    from fslm.cpu import apply_threads
    from fslm.engine import load_engine

    apply_threads()
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx2", "avx512", "amx"))})
    engine = load_engine("smollm2-135m", backend="hf")
    out = []
    for n in [int(x) for x in args.prompts.split(",")]:
        rows = stage_rows(engine, n)
        separate(engine, rows), engine.generate_mixed(rows)  # warm: stage heads stored, kernels loaded
        times = {"separate": [], "mixed": []}
        texts = {}
        for _ in range(args.repeats):
            for name, call in (("separate", separate), ("mixed", _texts)):
                t0 = time.perf_counter()
                texts[name] = call(engine, rows)
                times[name].append(time.perf_counter() - t0)
        s, m = statistics.median(times["separate"]), statistics.median(times["mixed"])
        same = sum(a == b for a, b in zip(texts["separate"], texts["mixed"], strict=True))
        out.append(
            {
                "prompts": n,
                "rows": len(rows),
                "separate_s": round(s, 3),
                "mixed_s": round(m, 3),
                "speedup": round(s / m, 2),
                "identical_texts": same,
                "times": {k: [round(t, 3) for t in v] for k, v in times.items()},
            }
        )
        print(json.dumps(out[-1]), flush=True)
    steps = []
    for batch in (1, 3, 8, 16):
        three = (["facts", "reasoning", "answer"] * batch)[:batch]
        steps.append(
            {
                "batch": batch,
                "one_adapter_ms": round(step_ms(engine, batch, None), 1),
                "three_adapters_ms": round(step_ms(engine, batch, three), 1) if batch >= 3 else None,
                "three_adapters_rowlora_ms": round(step_ms(engine, batch, three, row_lora=True), 1)
                if batch >= 3
                else None,
            }
        )
        print(json.dumps(steps[-1]), flush=True)
    return {
        "model": engine.model_ref,
        "engine": "hf",
        "dtype": engine.dtype,
        "threads": torch.get_num_threads(),
        "batch_size": engine.batch_size,
        "cpu_flags": flags,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "repeats": args.repeats,
        "rows": out,
        "decode_steps": steps,
    }


def _texts(engine, rows) -> list[str]:
    return [g.text for g in engine.generate_mixed(rows)]


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mixed.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Stages in one batch: `generate_mixed` vs one call per stage ({result['model']}, {result['engine']} "
        f"{result['dtype']})",
        "",
        "The default stack's free-form stages (facts, reasoning, answer: three LoRA adapters, 48/64/128 new tokens) on "
        "N alpaca seed instructions, their real inputs. Separate: one `generate` per stage (stage-head KV reuse on). "
        "Mixed: one `generate_mixed` over all rows (each adapter prefills apart with its stage-head reuse, then one "
        "decode loop with per-row adapters: RowLoRA, fslm/engine/rowlora.py). Median of "
        f"{result['repeats']} interleaved repeats; {result['threads']} threads, batch size {result['batch_size']}, "
        f"torch {result['torch']}, load average at the end {result['load_avg_end']}; CPU flags: "
        f"{' '.join(result['cpu_flags'])}.",
        "",
        "| prompts | rows | separate s | mixed s | speedup | identical texts |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['prompts']} | {r['rows']} | {r['separate_s']} | {r['mixed_s']} | {r['speedup']}x | "
            f"{r['identical_texts']}/{r['rows']} |"
        )
    lines += [
        "",
        "One decode step (40-token context), milliseconds: all rows under one adapter vs rows cycling through three "
        "adapters, through PEFT's per-row `adapter_names` and through fslm's RowLoRA.",
        "",
        "| batch | one adapter ms | three adapters, PEFT adapter_names ms | three adapters, RowLoRA ms |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["decode_steps"]:
        lines.append(
            f"| {r['batch']} | {r['one_adapter_ms']} | {r['three_adapters_ms'] or '-'} | "
            f"{r.get('three_adapters_rowlora_ms') or '-'} |"
        )
    (RESULTS / "mixed.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [r["rows"] for r in result["rows"]]
    ax.plot(xs, [r["separate_s"] for r in result["rows"]], "o-", label="one call per stage")
    ax.plot(xs, [r["mixed_s"] for r in result["rows"]], "s-", label="generate_mixed")
    ax.set_xlabel("rows (3 stages x prompts)")
    ax.set_ylabel("seconds for all rows")
    ax.set_title(f"three adapters' rows, {result['model']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "mixed.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="1,2,4,8", help="comma-separated prompt counts")
    parser.add_argument("--repeats", type=int, default=3)
    write(run(parser.parse_args()))
    print((RESULTS / "mixed.md").read_text())


if __name__ == "__main__":
    main()
