"""Speculative decoding on this CPU: speedup over plain greedy of the same target, acceptance rate, identical output.

    .venv/bin/python benchmarks/bench_speculative.py [--max-new-tokens 96] [--only LABEL ...]

Every configuration runs plain greedy and assisted greedy alternately per prompt (batch 1, same process, same
background load) and compares the texts. Configurations: SmolLM2-135M drafting for Qwen2.5-Coder-0.5B (different
tokenizers: universal assisted generation), Qwen2.5-Coder-0.5B drafting for the 1.5B (same tokenizer; draft length
and dtype tuned), prompt lookup (n-gram copying, no draft model) on ordinary and copy-heavy prompts, and prompt lookup
inside `Stack.run` of the 4-stage default stack (later stages copy text from earlier ones).
Each finished configuration is cached under --work, so an interrupted run resumes.
Outputs: benchmarks/results/collaborate/speculative.{json,md,png}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fslm.collaborate.speculative import AssistedEngine, compare_with_plain  # noqa: E402
from fslm.engine import GenerationParams, load_engine  # noqa: E402
from fslm.io import write_atomic, write_json  # noqa: E402
from fslm.settings import get_settings  # noqa: E402

PROSE_AND_CODE = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces. Include a docstring.",
    "Explain in one short paragraph why the sky is blue.",
    "Write a SQL query that returns the ten customers with the highest total order value, given tables "
    "customers(id, name) and orders(id, customer_id, amount).",
    "List five practical tips for writing clear emails.",
]
PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff. Every night its keeper climbed the spiral stairs, "
    "lit the great lamp and watched the ships pass safely through the narrow strait. In winter the storms "
    "were fierce, and the keeper wrote each one down in a thick leather logbook."
)
CODE = (
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(value)\n\n"
    "def variance(values):\n    m = mean(values)\n    return sum((v - m) ** 2 for v in values) / len(values)\n"
)
COPY_HEAVY = [
    f"Rewrite this paragraph in the present tense:\n\n{PARAGRAPH}",
    f"Fix the bug in this code and return the whole corrected code:\n\n{CODE}",
    f"Repeat this paragraph exactly, then add one sentence:\n\n{PARAGRAPH}",
]
STACK_PROMPTS = [
    "Why do leaves change colour in autumn?",
    "What is the capital of Australia and why was it chosen?",
    "How does a refrigerator keep food cold?",
    "Who wrote Pride and Prejudice?",
]

# label, target, target dtype, draft (or "lookup:N"), draft dtype, draft tokens, prompt set
CONFIGS = [
    ("smollm2->qwen0.5b (universal)", "qwen2.5-coder-0.5b", "float32", "smollm2-135m", "float32", None, "prose_code"),
    (
        "qwen0.5b->qwen1.5b default",
        "qwen2.5-coder-1.5b",
        "float32",
        "qwen2.5-coder-0.5b",
        "float32",
        None,
        "prose_code",
    ),
    ("qwen0.5b->qwen1.5b k=3", "qwen2.5-coder-1.5b", "float32", "qwen2.5-coder-0.5b", "float32", 3, "prose_code"),
    ("prompt lookup -> qwen1.5b, ordinary", "qwen2.5-coder-1.5b", "float32", "lookup:10", None, None, "prose_code"),
    ("prompt lookup -> qwen1.5b, copy-heavy", "qwen2.5-coder-1.5b", "float32", "lookup:10", None, None, "copy"),
    (
        "qwen0.5b(bf16)->qwen1.5b k=3",
        "qwen2.5-coder-1.5b",
        "float32",
        "qwen2.5-coder-0.5b",
        "bfloat16",
        3,
        "prose_code",
    ),
    (
        "qwen0.5b->qwen1.5b k=3 (both bf16, 2 threads)",
        "qwen2.5-coder-1.5b",
        "bfloat16",
        "qwen2.5-coder-0.5b",
        "bfloat16",
        3,
        "prose_code",
    ),
]
# bf16 matmuls are only fast here with more than one thread (1-thread bf16 prefill was ~7x slower than fp32).
THREADS = {"qwen0.5b->qwen1.5b k=3 (both bf16, 2 threads)": 2}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Engines:
    """Load each (model, dtype) once; drop the ones the next configuration does not need (RAM is shared)."""

    def __init__(self):
        self.loaded: dict[tuple[str, str], object] = {}

    def keep_only(self, keys: set[tuple[str, str]]) -> None:
        for key in [k for k in self.loaded if k not in keys]:
            del self.loaded[key]
        gc.collect()

    def get(self, ref: str, dtype: str):
        if (ref, dtype) not in self.loaded:
            log(f"loading {ref} ({dtype})")
            self.loaded[(ref, dtype)] = load_engine(ref, dtype=dtype)
        return self.loaded[(ref, dtype)]


def warm(engine, text: str) -> None:
    engine.generate([text], GenerationParams(max_new_tokens=4))


def run_pair(engines: Engines, cfg: tuple, max_new_tokens: int) -> dict:
    label, target_ref, t_dtype, draft_ref, d_dtype, k, kind = cfg
    import torch

    needed = {(target_ref, t_dtype)} | ({(draft_ref, d_dtype)} if not draft_ref.startswith("lookup:") else set())
    engines.keep_only(needed)
    for ref, dtype in sorted(needed):
        engines.get(ref, dtype)  # load first: loading an engine applies FSLM_THREADS
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS.get(label, threads))
    try:
        return _run_pair(engines, cfg, max_new_tokens) | {"threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads)


def _run_pair(engines: Engines, cfg: tuple, max_new_tokens: int) -> dict:
    label, target_ref, t_dtype, draft_ref, d_dtype, k, kind = cfg
    needed = {(target_ref, t_dtype)} | ({(draft_ref, d_dtype)} if not draft_ref.startswith("lookup:") else set())
    engines.keep_only(needed)
    target = engines.get(target_ref, t_dtype)
    prompts = PROSE_AND_CODE if kind == "prose_code" else COPY_HEAVY
    texts = [target.render_chat([{"role": "user", "content": p}]) for p in prompts]
    if draft_ref.startswith("lookup:"):
        assisted = AssistedEngine(target, prompt_lookup=int(draft_ref.split(":")[1]))
    else:
        assisted = AssistedEngine(target, engines.get(draft_ref, d_dtype), draft_tokens=k)
    warm(target, texts[0])
    warm(assisted, texts[0])
    load0 = os.getloadavg()[0]
    report, plain, fast = compare_with_plain(assisted, texts, GenerationParams(max_new_tokens=max_new_tokens))
    out = report.to_dict()
    out.update(
        label=label,
        target_dtype=t_dtype,
        draft_dtype=d_dtype,
        prompts_kind=kind,
        universal=assisted.universal,
        loadavg=[round(load0, 2), round(os.getloadavg()[0], 2)],
        per_prompt=[
            {
                "plain_s": round(p.seconds, 3),
                "assisted_s": round(f.seconds, 3),
                "tokens": p.tokens_out,
                "acceptance": round(f.acceptance, 3),
                "identical": p.text == f.text,
            }
            for p, f in zip(plain, fast)
        ],
        sample=fast[0].text[:300],
    )
    return out


def run_stack(engines: Engines, base_model: str, max_prompts: int) -> dict:
    """The default 4-stage stack on `base_model`, plain vs prompt lookup, one prompt at a time, traces compared."""
    from fslm.config import load_default_stack_config
    from fslm.stack import Stack

    engines.keep_only({(base_model, "float32")})
    engine = engines.get(base_model, "float32")
    cfg = load_default_stack_config().without_adapters().model_copy(update={"base_model": base_model})
    plain_stack, fast_stack = Stack(cfg, engine), Stack(cfg, AssistedEngine(engine, prompt_lookup=10))
    plain_stack.run(STACK_PROMPTS[0])  # warm-up
    per_stage: dict[str, list[float]] = {s.name: [0.0, 0.0] for s in cfg.stages}
    identical, tokens = True, 0
    fast_engine = fast_stack.engine
    fast_engine.draft_stats.drafted = fast_engine.draft_stats.accepted = 0
    for prompt in STACK_PROMPTS[:max_prompts]:
        a, b = plain_stack.run(prompt), fast_stack.run(prompt)
        identical &= [r.output for r in a.trace] == [r.output for r in b.trace]
        for ra, rb in zip(a.trace, b.trace):
            per_stage[ra.stage][0] += ra.seconds
            per_stage[ra.stage][1] += rb.seconds
            tokens += ra.tokens_out
    plain_s = sum(v[0] for v in per_stage.values())
    fast_s = sum(v[1] for v in per_stage.values())
    stats = fast_engine.draft_stats
    return {
        "target": f"stack:default@{base_model}",
        "draft": "prompt-lookup(10)",
        "label": f"prompt lookup in Stack.run ({base_model})",
        "speedup": round(plain_s / fast_s, 4),
        "acceptance": round(stats.acceptance, 4),
        "identical": identical,
        "prompts": max_prompts,
        "tokens": tokens,
        "plain_seconds": round(plain_s, 2),
        "assisted_seconds": round(fast_s, 2),
        "per_stage_speedup": {k: round(v[0] / v[1], 3) if v[1] else None for k, v in per_stage.items()},
    }


def markdown(results: list[dict], setup: dict) -> str:
    lines = [
        "# Speculative decoding (greedy, batch 1, CPU)",
        "",
        f"torch threads {setup['threads']} (unless the configuration says otherwise), {setup['max_new_tokens']} new tokens max per prompt; plain and assisted "
        "alternate per prompt. Speedup = plain seconds / assisted seconds over the same prompts; acceptance = accepted / "
        "drafted tokens; identical = every assisted text equals the plain greedy text.",
        "",
        "| configuration | target | drafter | speedup | acceptance | identical | plain tok/s | prompts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tps = f"{r['plain_tokens_per_s']:.2f}" if "plain_tokens_per_s" in r else "-"
        dtype = f" ({r.get('target_dtype')})" if r.get("target_dtype") else ""
        lines.append(
            f"| {r['label']} | {r['target']}{dtype} | {r['draft']} | {r['speedup']:.2f}x | {r['acceptance']:.1%} | "
            f"{'yes' if r['identical'] else 'NO'} | {tps} | {r['prompts']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(results) + 1.5))
    labels = [r["label"] for r in results][::-1]
    speed = [r["speedup"] for r in results][::-1]
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speed]
    ax.barh(labels, speed, color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.axvline(2.0, color="gray", lw=1, ls="--")
    for y, (s, r) in enumerate(zip(speed, results[::-1])):
        ax.text(
            s + 0.03,
            y,
            f"{s:.2f}x, acc {r['acceptance']:.0%}" + ("" if r["identical"] else ", NOT identical"),
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("speedup over plain greedy of the same target (batch 1)")
    ax.set_title("speculative decoding on a 2-core CPU")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--only", nargs="*", help="labels to (re)run")
    ap.add_argument("--work", type=Path, default=get_settings().cache_dir / "bench" / "speculative")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "collaborate")
    args = ap.parse_args()
    import torch

    engines = Engines()
    results = []
    jobs = [("pair", c) for c in CONFIGS] + [("stack", "smollm2-135m"), ("stack", "qwen2.5-coder-0.5b")]
    for kind, cfg in jobs:
        label = cfg[0] if kind == "pair" else f"prompt lookup in Stack.run ({cfg})"
        cache = args.work / f"{label.replace('/', '_').replace(' ', '_')}.json"
        if cache.is_file() and not (args.only and label in args.only):
            results.append(json.loads(cache.read_text()))
            continue
        if args.only and label not in args.only:
            continue
        log(f"running: {label}")
        res = (
            run_pair(engines, cfg, args.max_new_tokens)
            if kind == "pair"
            else run_stack(engines, cfg, len(STACK_PROMPTS))
        )
        write_json(cache, res)
        log(f"  speedup {res['speedup']:.2f}x, acceptance {res['acceptance']:.1%}, identical {res['identical']}")
        results.append(res)
    setup = {
        "threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens,
        "cpu_count": os.cpu_count(),
        "note": "shared 2-core machine; loadavg per configuration is recorded (start, end)",
    }
    write_json(args.out / "speculative.json", {"pairs": results, "setup": setup})
    write_atomic(args.out / "speculative.md", markdown(results, setup))
    plot(results, args.out / "speculative.png")
    log("done")


if __name__ == "__main__":
    main()
