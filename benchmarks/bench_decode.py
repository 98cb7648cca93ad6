"""Decode speed of the default model and the memory cost of a 4-stage stack vs a single model.

Measures, in one run on this machine:
- greedy decode tokens/s at batch 1 and batch 16 (fp32 and bf16),
- that speed as a fraction of the memory-bandwidth bound (weight bytes read per token vs measured copy bandwidth),
- the default stack's stage batches (16 real prompts) decoded by transformers' `generate` (every row runs until the
  longest ends) vs fslm's loop (finished rows leave the batch): seconds per stage and identical texts,
- peak RSS of one model alone vs the default 4-stage stack with a LoRA adapter on every stage (one shared base),
  each in a fresh subprocess so the peaks do not mix.

Usage: python benchmarks/bench_decode.py [--model smollm2-135m] [--new-tokens 64] [--out benchmarks/results/decode]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a short story about a robot learning to paint.",
    "What are the main causes of the French Revolution?",
    "Describe how a bicycle works.",
]


def copy_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of-N memcpy bandwidth (read + write bytes per second) of a large tensor clone."""
    import torch

    src = torch.empty(megabytes * (1 << 20) // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def decode_speed(engine, batch: int, new_tokens: int) -> dict:
    from fslm.engine import GenerationParams

    texts = [engine.render_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(batch)]
    params = GenerationParams(max_new_tokens=new_tokens)
    engine.generate(texts[:1], GenerationParams(max_new_tokens=4))  # warm-up
    # Force the full length so every run decodes the same number of tokens.
    eos = engine.eos_ids
    engine.eos_ids = []
    try:
        t0 = time.perf_counter()
        outs = engine.generate(texts, params)
        seconds = time.perf_counter() - t0
    finally:
        engine.eos_ids = eos
    tokens = sum(o.tokens_out for o in outs)
    return {
        "batch": batch,
        "new_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
    }


def hf_generate_texts(engine, texts: list[str], params) -> list[str]:
    """The pre-0.2 engine path: transformers' generate on a left-padded batch with the same logits processors."""
    import torch
    from transformers import LogitsProcessorList

    from fslm.engine.decode import GeneratedNoRepeatNGram, PromptOnlyRepetitionPenalty, cut_at_stop

    tok = engine.tokenizer
    batch = [engine.encode(t) for t in texts]
    width = max(len(ids) for ids in batch)
    pads = [width - len(ids) for ids in batch]
    ids = torch.tensor([[tok.pad_token_id] * p + b for p, b in zip(pads, batch)])
    mask = torch.tensor([[0] * p + [1] * len(b) for p, b in zip(pads, batch)])
    processors = []
    if params.repetition_penalty != 1.0:
        processors.append(PromptOnlyRepetitionPenalty(params.repetition_penalty, pads))
    if params.no_repeat_ngram_size:
        processors.append(GeneratedNoRepeatNGram(params.no_repeat_ngram_size, width))
    with torch.inference_mode():
        out = engine.base.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=engine.eos_ids,
            logits_processor=LogitsProcessorList(processors),
            stop_strings=list(params.stop) or None,
            tokenizer=tok,
        )
    texts_out = []
    for row in range(len(batch)):
        new = out[row, width:].tolist()
        for k, t in enumerate(new):
            if t in engine.eos_ids:
                new = new[:k]
                break
        text = tok.decode(new, skip_special_tokens=True)
        cut = cut_at_stop(text, params.stop)
        texts_out.append((cut if cut is not None else text).strip())
    return texts_out


def stage_batches(engine, batch: int = 16) -> list[dict]:
    """Each default stage on `batch` real prompts: transformers' generate vs fslm's decode loop, same inputs."""
    from fslm.config import load_default_stack_config
    from fslm.settings import get_settings
    from fslm.stack import Stack, generation_params

    seeds = (get_settings().data_dir / "alpaca" / "seed_tasks.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["instruction"] for line in seeds[:batch]]
    stack = Stack(load_default_stack_config().without_adapters(), engine)  # prompt-only: what these numbers measured
    results = stack.run_batch(prompts)  # gives every stage its real inputs
    rows = []
    for index, stage in enumerate(stack.config.stages):
        texts = [r.trace[index].input for r in results]
        params = generation_params(stage)
        t0 = time.perf_counter()
        old = hf_generate_texts(engine, texts, params)
        t_old = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = engine.generate(texts, params)
        t_new = time.perf_counter() - t0
        lengths = [g.tokens_out for g in new]
        rows.append(
            {
                "stage": stage.name,
                "batch": batch,
                "max_new_tokens": params.max_new_tokens,
                "tokens_out_min": min(lengths),
                "tokens_out_max": max(lengths),
                "tokens_out_mean": round(sum(lengths) / batch, 1),
                "hf_generate_s": round(t_old, 3),
                "fslm_decode_s": round(t_new, 3),
                "speedup": round(t_old / t_new, 2),
                "identical": old == [g.text for g in new],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def weight_bytes(engine) -> int:
    """Bytes read per decoded token: every weight once (tied embeddings count once: the lm_head reads them)."""
    seen, total = set(), 0
    for p in engine.base.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def child_peak_rss(mode: str, model: str, adapters_dir: str) -> dict:
    """Run in a fresh process: load one model, or the 4-stage stack with adapters; generate; report peak RSS."""
    from fslm.config import load_default_stack_config
    from fslm.engine import GenerationParams, load_engine
    from fslm.stack import Stack

    engine = load_engine(model)
    if mode == "single":
        engine.generate(
            [engine.render_chat([{"role": "user", "content": PROMPTS[0]}])], GenerationParams(max_new_tokens=16)
        )
        stages = 1
    else:
        cfg = load_default_stack_config().without_adapters()
        cfg.base_model = model
        for stage in cfg.stages:
            stage.adapter = str(Path(adapters_dir) / stage.name)
            stage.generation.max_new_tokens = 16
        stack = Stack(cfg, engine)
        stack.run(PROMPTS[0])
        stages = len(cfg.stages)
    rss_now = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    return {
        "mode": mode,
        "stages": stages,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_run_mb": round(rss_now / 1024, 1),
    }


def make_adapters(model: str, folder: Path, rank: int = 16) -> None:
    """Realistic LoRA adapters (rank 16 on all 7 projections) for each default stage, random weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from fslm.config import load_default_stack_config
    from fslm.models import load_model

    loaded = load_model(model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i, stage in enumerate(load_default_stack_config().stages):
        torch.manual_seed(i)
        peft_model = get_peft_model(
            loaded.model, LoraConfig(r=rank, lora_alpha=32, target_modules=targets, init_lora_weights=False)
        )
        peft_model.save_pretrained(folder / stage.name)
        loaded.model = peft_model.unload()


def memory_comparison(model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        make_adapters(model, Path(tmp))
        runs = {}
        for mode in ("single", "stack"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--model", model, "--adapters", tmp],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = runs["stack"]["peak_rss_mb"] / runs["single"]["peak_rss_mb"]
    steady = runs["stack"]["rss_after_run_mb"] / runs["single"]["rss_after_run_mb"]
    return {
        "single": runs["single"],
        "stack": runs["stack"],
        "stack_over_single": round(ratio, 3),
        "stack_over_single_after_run": round(steady, 3),
        "goal_max_ratio": 1.15,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"# Decode speed and stack memory ({result['model']})",
        "",
        f"Measured {result['date']} on {result['machine']}; load average at start {result['load_avg']}.",
        f"Copy bandwidth {result['copy_bandwidth_gbs']} GB/s (read+write).",
        "",
        "| dtype | batch | tokens/s | weight bytes/step | bound steps/s | fraction of bound |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["decode"]:
        lines.append(
            f"| {row['dtype']} | {row['batch']} | {row['tokens_per_s']} | {row['weight_mb']} MB | {row['bound_tokens_per_s']} | "
            f"{row['fraction_of_bound']} |"
        )
    if result.get("stages"):
        lines += [
            "",
            "Default stack, one batch of 16 real prompts per stage: transformers' `generate` (rows run until the longest "
            "ends) vs fslm's decode loop (finished rows leave the batch), same inputs, same process:",
            "",
            "| stage | max new | tokens out (min/mean/max) | generate (s) | fslm decode (s) | speedup | identical texts |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["stages"]:
            lines.append(
                f"| {r['stage']} | {r['max_new_tokens']} | {r['tokens_out_min']}/{r['tokens_out_mean']}/{r['tokens_out_max']} | "
                f"{r['hf_generate_s']} | {r['fslm_decode_s']} | {r['speedup']}x | {r['identical']} |"
            )
        total_old = sum(r["hf_generate_s"] for r in result["stages"])
        total_new = sum(r["fslm_decode_s"] for r in result["stages"])
        lines.append(
            f"| **all stages** | | | {round(total_old, 2)} | {round(total_new, 2)} | **{round(total_old / total_new, 2)}x** | |"
        )
    mem = result["memory"]
    lines += [
        "",
        "| system | peak RSS (MB) | RSS after the run (MB) |",
        "|---|---|---|",
        f"| single model | {mem['single']['peak_rss_mb']} | {mem['single']['rss_after_run_mb']} |",
        f"| 4-stage stack, 4 LoRA adapters (r=16, 7 projections), one shared base | {mem['stack']['peak_rss_mb']} | "
        f"{mem['stack']['rss_after_run_mb']} |",
        "",
        f"Stack / single: peak RSS **{mem['stack_over_single']}x**, RSS after the run **{mem['stack_over_single_after_run']}x** "
        f"(goal <= {mem['goal_max_ratio']}x). The peak is set by loading the weights, which both do once.",
        "",
        "Bound = copy bandwidth / weight bytes: the decode steps per second possible if every step only streamed the "
        "weights once. Fraction of bound = measured decode steps per second (tokens/s / batch) / bound; at batch 16 one "
        "step yields 16 tokens, so tokens/s can exceed the batch-1 bound while the fraction stays below 1.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/decode")
    parser.add_argument("--child", choices=["single", "stack"])
    parser.add_argument("--adapters")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-stages", action="store_true", help="skip the generate-vs-fslm-decode stage comparison")
    parser.add_argument("--memory-only", action="store_true", help="re-measure memory, keep the decode rows of --out")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_peak_rss(args.child, args.model, args.adapters)))
        return

    import torch

    from fslm.engine import load_engine

    bandwidth = copy_bandwidth_gbs()
    result = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "copy_bandwidth_gbs": round(bandwidth, 1),
        "decode": [],
    }
    if args.memory_only:
        result = json.loads((Path(args.out) / "decode.json").read_text())
    for dtype in () if args.memory_only else ("float32", "bfloat16"):
        engine = load_engine(args.model, dtype=dtype)
        wbytes = weight_bytes(engine)
        # A decode step must stream every weight from memory once, whatever the batch size.
        bound = bandwidth * 1e9 / wbytes
        for batch in (1, 16):
            row = decode_speed(engine, batch, args.new_tokens)
            steps_per_s = row["tokens_per_s"] / batch
            row.update(
                dtype=dtype,
                weight_mb=round(wbytes / 1e6, 1),
                bound_tokens_per_s=round(bound, 1),
                fraction_of_bound=round(steps_per_s / bound, 3),
            )
            print(json.dumps(row), flush=True)
            result["decode"].append(row)
        if dtype == "float32" and not args.skip_stages:
            result["stages"] = stage_batches(engine)
        del engine
    result["memory"] = {} if args.skip_memory else memory_comparison(args.model)
    print(json.dumps(result["memory"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "decode.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
