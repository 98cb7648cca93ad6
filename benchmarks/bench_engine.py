"""HF (fp32, the reference engine) vs the llama.cpp engine, measured in ONE run on one machine.

    FSLM_THREADS=2 python benchmarks/bench_engine.py                  # full run: run it alone on a quiet machine
    python benchmarks/bench_engine.py --smoke --out /tmp/bench-smoke  # tiny sizes: proves the script works (minutes)

What it measures (both engines, same threads, same prompts):
- machine: CPU model and the flags that decide kernels (avx2, avx512*, amx*), copy bandwidth of a numpy copy
  (STREAM convention: bytes read + bytes written per second, best of several copies of a 256 MiB array);
- batch-1 decode tok/s of the model: (tokens of a 64-token generation - tokens of a 1-token generation) / (time
  difference), so prefill is excluded; best of --repeats; and its fraction of the memory-bandwidth bound, where the
  bound = copy bandwidth / bytes of weights read per token (all tensors of the GGUF; all parameters in fp32 for HF);
- batch-16 decode tok/s the same way with 16 different prompts, and the ratio llama.cpp / HF;
- the packaged default 4-stage stack on short questions at batch 1: p50 seconds over --repeats runs (after two other
  questions fill the prefix store with each stage's fixed head, and a warm-up),
  and the base model answering the same question alone (the answer stage's generation settings, no adapter): the
  ratio stack p50 / base p50; for both engines;
- parity: greedy texts of both engines on a few chat prompts (identical count, identical first token), and a paired
  bootstrap of the accuracy difference of the base model on --parity-tasks x --parity-limit items (`fslm eval`'s own
  evaluate() and compare(); needs the `eval` extra), whose macro 95% CI should include 0.

Writes to --out (default benchmarks/results/engine/): results.json (everything), summary.json (the keys the issue
fixes; what this script does not measure is null: serve_ratio needs `fslm serve --engine`, eval_vs_lmeval needs
lm-eval's HF backend timed on the same items), RESULTS.md and engine.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LONG_PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy city market, with many details.",
    "Write a letter to a friend about your summer holidays.",
    "Explain the water cycle to a child, step by step.",
    "Write a long poem about the sea.",
    "Describe how to plant and care for a vegetable garden.",
    "Tell the history of the bicycle.",
    "Write a detailed recipe for vegetable soup.",
    "Explain why exercise is good for health, with examples.",
    "Describe the life of a honey bee.",
    "Write a story about a robot who wants to become a painter.",
    "Explain how the internet works to someone from the 1800s.",
    "Describe a football match as a radio commentator.",
    "Write a travel guide for a small mountain village.",
    "Explain the rules of chess.",
]
WARMUP_QUESTIONS = ["What is the tallest mountain on Earth?", "Which ocean is the largest?"]
PARITY_PROMPTS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "Name three primary colors.",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
]
SUMMARY_KEYS = (
    "cpu",
    "engine",
    "weight_format",
    "decode_b1_tok_s",
    "decode_b1_fraction_of_bound",
    "decode_b16_vs_hf",
    "stack_p50_seconds",
    "stack_vs_base_latency",
    "serve_ratio",
    "eval_vs_lmeval",
    "parity_ci_includes_zero",
)


def cpu_facts() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    model = platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and model in ("unknown", ""):
            model = line.split(":", 1)[1].strip()
    if model in ("unknown", "", "x86_64"):
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), model)
    kernel_flags = sorted(
        f for f in flags if f in ("avx2", "fma", "f16c") or f.startswith(("avx512", "amx", "avx_vnni"))
    )
    return {"model": model, "cores": os.cpu_count(), "flags": kernel_flags}


def cpu_label(facts: dict) -> str:
    f = set(facts["flags"])
    isa = (
        "AMX"
        if any(x.startswith("amx") for x in f)
        else "AVX-512"
        if "avx512f" in f
        else "AVX2"
        if "avx2" in f
        else "?"
    )
    return f"{facts['model']} ({isa}; {facts['cores']} cores)"


def llama_build() -> str:
    """The kernels the installed llama.cpp was compiled with (its system info), and whether its AMX kernels carry
    scripts/llama-cpp-build.sh's fix: the same CPU runs at very different speeds with and without them."""
    import llama_cpp

    from fslm.engine.llamacpp.runtime import AMX_FIX_MARKER

    info = " ".join(llama_cpp.llama_print_system_info().decode().split())
    fixed = (Path(llama_cpp.__file__).parent / AMX_FIX_MARKER).exists()
    return f"{info} AMX fix: {'yes' if fixed else 'no'}"


def copy_bandwidth(mib: int = 256, repeats: int = 7) -> float:
    """Bytes read + written per second by numpy copying a `mib` MiB array (best of `repeats`)."""
    import numpy as np

    src = np.ones(mib << 18, dtype=np.float32)  # mib MiB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def chat(engine, text: str) -> str:
    return engine.render_chat([{"role": "user", "content": text}])


def decode_rate(engine, prompts: list[str], new_tokens: int, repeats: int) -> dict:
    """Decode tokens/s without prefill: (tokens(new) - tokens(1)) / (best t(new) - best t(1)) over `repeats` runs."""
    from fslm.engine import GenerationParams

    texts = [chat(engine, p) for p in prompts]
    engine.generate(texts, GenerationParams(max_new_tokens=4))  # warm-up (allocations, first-call costs)
    short_s, long_s, tokens = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        short = engine.generate(texts, GenerationParams(max_new_tokens=1))
        t1 = time.perf_counter()
        long = engine.generate(texts, GenerationParams(max_new_tokens=new_tokens))
        t2 = time.perf_counter()
        short_s.append(t1 - t0)
        long_s.append(t2 - t1)
        tokens = sum(g.tokens_out for g in long) - sum(g.tokens_out for g in short)
    spent = min(long_s) - min(short_s)
    rate = tokens / spent if spent > 0 and tokens > 0 else float("nan")
    return {
        "tok_s": rate,
        "decoded_tokens": tokens,
        "rows": len(texts),
        "seconds_new_tokens": long_s,
        "seconds_one_token": short_s,
    }


def stack_latency(engine, questions: list[str], repeats: int) -> dict:
    """p50 seconds of the default stack and of the base model answering alone (same engine, the answer stage's
    generation settings, no adapter), over several short questions: one question can mislead, e.g. when the base
    model rambles to its token limit on it under one engine and answers in a line under the other."""
    from fslm.stack import Stack, generation_params

    stack = Stack.load(None, engine=engine)
    answer_params = generation_params(stack.config.stages[-1])
    # Two other questions first, so the engine's prefix store holds each stage's fixed head. Otherwise the first
    # measured question, asked again, finds its own whole prompt stored (a one-row head is shared with the previous
    # row) and its repeats skip almost all prefill, which no new question does.
    for other in WARMUP_QUESTIONS:
        stack.run(other)
        engine.generate([chat(engine, other)], answer_params)
    stack_s, base_s, per_question = [], [], []
    for question in questions:
        stack.run(question)  # warm-up
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            answer = stack.run(question).answer
            runs.append(time.perf_counter() - t0)
        text = chat(engine, question)
        engine.generate([text], answer_params)
        base_runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            base = engine.generate([text], answer_params)[0]
            base_runs.append(time.perf_counter() - t0)
        stack_s += runs
        base_s += base_runs
        per_question.append(
            {
                "question": question,
                "stack_p50_seconds": statistics.median(runs),
                "base_p50_seconds": statistics.median(base_runs),
                "stack_answer": answer,
                "base_answer": base.text,
                "base_tokens_out": base.tokens_out,
            }
        )
    return {
        "questions": len(questions),
        "stack_p50_seconds": statistics.median(stack_s),
        "base_p50_seconds": statistics.median(base_s),
        "stack_vs_base_latency": statistics.median(stack_s) / statistics.median(base_s),
        "per_question": per_question,
    }


def prefix_ab(engine, questions: list[str], repeats: int) -> dict:
    """The default stack with stage-head reuse on and off on one engine, interleaved run by run (so drift in the
    machine's speed hits both alike): p50 seconds each, their ratio, and whether the answers are the same."""
    from fslm.stack import Stack

    stack = Stack.load(None, engine=engine)
    budget = engine.prefixes.budget_tokens
    times: dict[str, list[float]] = {"on": [], "off": []}
    answers: dict[str, list[str]] = {"on": [], "off": []}
    for question in questions:
        stack.run(question)  # warm-up (and, with reuse on, seeds the heads)
        for _ in range(repeats):
            for mode in ("off", "on"):
                engine.prefixes.budget_tokens = budget if mode == "on" else 0
                t0 = time.perf_counter()
                answers[mode].append(stack.run(question).answer)
                times[mode].append(time.perf_counter() - t0)
    engine.prefixes.budget_tokens = budget
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    same = sum(a == b for a, b in zip(answers["on"], answers["off"]))
    return {"p50_on": on, "p50_off": off, "speedup": off / on, "same_answers": f"{same}/{len(answers['on'])}"}


def text_parity(fast, ref, n_prompts: int, new_tokens: int) -> dict:
    from fslm.engine import GenerationParams

    texts = [chat(ref, p) for p in PARITY_PROMPTS[:n_prompts]]
    params = GenerationParams(max_new_tokens=new_tokens, no_repeat_ngram_size=4)
    a, b = fast.generate(texts, params), ref.generate(texts, params)
    first = GenerationParams(max_new_tokens=1)
    fa, fb = fast.generate(texts, first), ref.generate(texts, first)
    single = [fast.generate([t], params)[0].text for t in texts]
    return {
        "prompts": len(texts),
        "identical_texts": sum(x.text == y.text for x, y in zip(a, b)),
        "identical_first_token": sum(x.text == y.text for x, y in zip(fa, fb)),
        "fast_batch_equals_one_by_one": all(s == x.text for s, x in zip(single, a)),
        "pairs": [{"prompt": p, "fast": x.text, "hf": y.text} for p, x, y in zip(PARITY_PROMPTS, a, b)],
    }


def eval_parity(fast, ref, tasks: str, limit: int, out: Path) -> dict:
    """Paired bootstrap CI of accuracy(fast) - accuracy(HF) for the base model (fslm's evaluate + compare)."""
    from fslm.evaluate.compare import compare
    from fslm.evaluate.run import evaluate
    from fslm.evaluate.systems import ModelSystem

    runs = {}
    for name, engine in (("llamacpp", fast), ("hf", ref)):
        folder = out / "parity" / name
        # A parity run measures these engines on this machine now: an earlier run's items (another CPU, another
        # scoring path) must not be resumed as if they were this run's.
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        evaluate(ModelSystem(engine, name=f"model:{engine.model_ref}:{name}"), tasks, limit=limit, out_dir=folder)
        runs[name] = {"folder": str(folder), "seconds": time.perf_counter() - t0}
    result = compare(runs["llamacpp"]["folder"], runs["hf"]["folder"], out_dir=out / "parity")
    macro = result["tasks"].get("macro", {})
    ci = macro.get("ci95")
    per_task = {t: {"diff": v.get("diff"), "ci95": v.get("ci95"), "n": v.get("n")} for t, v in result["tasks"].items()}
    return {
        "tasks": tasks,
        "limit": limit,
        "macro_diff": macro.get("diff"),
        "macro_ci95": ci,
        "ci_includes_zero": bool(ci is not None and ci[0] <= 0 <= ci[1]),
        "per_task": per_task,
        "eval_seconds": {k: v["seconds"] for k, v in runs.items()},
    }


def weight_bytes_hf(engine) -> int:
    seen, total = set(), 0
    for p in engine.base.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hf, ll = results["hf"], results["llamacpp"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = ["HF fp32", f"llama.cpp {ll['weight_format']}"]
    colors = ["#888888", "#1f77b4"]
    ax = axes[0]
    ax.bar(names, [hf["decode_b1"]["tok_s"], ll["decode_b1"]["tok_s"]], color=colors)
    for x, key in enumerate(("hf", "llamacpp")):
        ax.hlines(results[key]["bound_tok_s"], x - 0.4, x + 0.4, colors="red", linestyles="dashed")
    ax.set_title("batch-1 decode tok/s (red: bandwidth bound)")
    ax = axes[1]
    ax.bar(names, [hf["decode_b16"]["tok_s"], ll["decode_b16"]["tok_s"]], color=colors)
    ax.set_title(f"batch-{ll['decode_b16']['rows']} decode tok/s")
    ax = axes[2]
    width = 0.38
    for i, key in enumerate(("hf", "llamacpp")):
        lat = results[key].get("stack")
        if lat:
            ax.bar(
                [0 + (i - 0.5) * width, 1 + (i - 0.5) * width],
                [lat["base_p50_seconds"], lat["stack_p50_seconds"]],
                width,
                color=colors[i],
                label=names[i],
            )
    ax.set_xticks([0, 1], ["base model alone", "4-stage stack"])
    ax.set_title("p50 seconds, short question, batch 1")
    ax.legend()
    fig.suptitle(f"{results['model']} on {cpu_label(results['cpu'])}, {results['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ci(bounds) -> str:
    return f"[{bounds[0]:+.4f}, {bounds[1]:+.4f}]"


def markdown(results: dict, summary: dict, out: Path | None = None) -> str:
    hf, ll = results["hf"], results["llamacpp"]
    lines = [
        "# Engine benchmark: HF fp32 vs llama.cpp",
        "",
        f"- CPU: {cpu_label(results['cpu'])}; flags: {' '.join(results['cpu']['flags'])}",
        f"- model: {results['model']}; threads: {results['threads']}; new tokens: {results['new_tokens']}; "
        f"repeats: {results['repeats']}; copy bandwidth (read+write): {results['copy_bandwidth_gb_s']:.1f} GB/s",
        f"- llama-cpp-python {results['versions'].get('llama_cpp')}, torch {results['versions'].get('torch')}, "
        f"transformers {results['versions'].get('transformers')}",
        *([f"- llama.cpp build: {results['llama_cpp_build']}"] if results.get("llama_cpp_build") else []),
        *(
            [
                f"- stack latency re-measured {results['stack_remeasured']} (`--stack-only`; CPU: {cpu_label(results['stack_cpu'])})"
            ]
            if "stack_remeasured" in results
            else []
        ),
        "",
        "| | HF fp32 | llama.cpp |",
        "|---|---|---|",
        f"| weight format | fp32 | {ll['weight_format']} |",
        f"| weight bytes read per token | {hf['weight_bytes'] / 1e6:.1f} MB | {ll['weight_bytes'] / 1e6:.1f} MB |",
        f"| bandwidth bound, batch 1 | {hf['bound_tok_s']:.1f} tok/s | {ll['bound_tok_s']:.1f} tok/s |",
        f"| batch-1 decode | {hf['decode_b1']['tok_s']:.1f} tok/s ({hf['fraction_of_bound']:.0%} of bound) | "
        f"{ll['decode_b1']['tok_s']:.1f} tok/s ({ll['fraction_of_bound']:.0%} of bound) |",
        f"| batch-{ll['decode_b16']['rows']} decode | {hf['decode_b16']['tok_s']:.1f} tok/s | "
        f"{ll['decode_b16']['tok_s']:.1f} tok/s ({summary['decode_b16_vs_hf']:.2f}x HF) |",
    ]
    for key, label in (("hf", "HF"), ("llamacpp", "llama.cpp")):
        lat = results[key].get("stack")
        if lat:
            lines.append(
                f"| {label}: stack p50 / base p50 | {lat['stack_p50_seconds']:.2f} s / {lat['base_p50_seconds']:.2f} s "
                f"= {lat['stack_vs_base_latency']:.2f}x | |"
            )
    stacks = [(label, results[key].get("stack")) for key, label in (("hf", "HF"), ("llamacpp", "llama.cpp"))]
    stacks = [(label, lat) for label, lat in stacks if lat and "per_question" in lat]
    if stacks:
        lines += [
            "",
            f"Default stack vs base model alone, batch 1, per question (p50 of {results['repeats']} runs; base = the "
            "answer stage's generation settings, no adapter; base tokens = its answer's length):",
            "",
            "| question | " + " | ".join(f"{label} stack s | {label} base s (tokens)" for label, _ in stacks) + " |",
            "|---|" + "---|---|" * len(stacks),
        ]
        for i, q in enumerate(stacks[0][1]["per_question"]):
            cells = [
                f"{lat['per_question'][i]['stack_p50_seconds']:.2f} | {lat['per_question'][i]['base_p50_seconds']:.2f} "
                f"({lat['per_question'][i]['base_tokens_out']})"
                for _, lat in stacks
            ]
            lines.append(f"| {q['question']} | " + " | ".join(cells) + " |")
    for key, label in (("hf", "HF"), ("llamacpp", "llama.cpp")):
        ab = results[key].get("prefix_ab")
        if ab:
            lines.append(
                f"\n{label}, default stack with stage-head reuse off / on (interleaved): p50 {ab['p50_off']:.3f} s / "
                f"{ab['p50_on']:.3f} s = {ab['speedup']:.2f}x; same answers {ab['same_answers']}."
            )
    tp = results.get("text_parity")
    if tp:
        lines += [
            "",
            f"Greedy text parity on {tp['prompts']} chat prompts: {tp['identical_texts']} identical texts, "
            f"{tp['identical_first_token']} identical first tokens; llama.cpp batch == one-by-one: "
            f"{tp['fast_batch_equals_one_by_one']}.",
        ]
    ep = results.get("eval_parity")
    if ep:
        lines += [
            "",
            f"Accuracy parity ({ep['tasks']}, {ep['limit']} items per task), llama.cpp - HF: macro "
            f"{ep['macro_diff']:+.4f}, 95% CI {_ci(ep['macro_ci95'])}; includes 0: {ep['ci_includes_zero']}.",
            "",
            "| task | n | diff | 95% CI |",
            "|---|---|---|---|",
        ]
        lines += [f"| {t} | {v['n']} | {v['diff']:+.4f} | {_ci(v['ci95'])} |" for t, v in ep["per_task"].items()]
    lines += other_scripts(out)
    lines += ["", "summary.json:", "", "```json", json.dumps(summary, indent=2), "```", ""]
    if results.get("smoke"):
        lines.insert(2, "**SMOKE RUN (tiny sizes): these numbers are not results.**\n")
    return "\n".join(lines)


def other_scripts(out: Path | None) -> list[str]:
    """RESULTS.md lines for what bench_serve.py and bench_eval_speed.py measured into the same folder."""
    if not out:
        return []
    lines = []
    serve, speed = out / "serve" / "summary.json", out / "eval_speed.json"
    if serve.exists():
        s = json.loads(serve.read_text())
        st = s.get("settings", {})
        lines.append(
            f"- `bench_serve.py --engine {st.get('engine')}` ({s.get('generated_at')}): {st.get('clients')} clients "
            f"for {st.get('duration_s')} s vs the same prompts sequentially: **{s['throughput_ratio']}x** requests/s "
            f"({s.get('tokens_per_s_ratio')}x tokens/s), 0 5xx: {s.get('zero_5xx')}, identical answers "
            f"{s.get('same_answer_rate')}, requests join running ones: {st.get('join_running', False)} ([serve/](serve/))."
        )
    if speed.exists():
        e = json.loads(speed.read_text())
        same = ", ".join(f"{k} {v}x" for k, v in e.get("ratios_same_dtype", {}).items())
        fp32 = ", ".join(f"{k} {v}x" for k, v in e.get("ratios_vs_lm_eval", {}).items())
        lines.append(
            f"- `bench_eval_speed.py --limit {e.get('limit')}` ({e.get('finished')}, {cpu_label(e['cpu'])}): fslm eval "
            f"vs lm-eval's HF backend{', same dtype: ' + same + ';' if same else ''} vs lm-eval fp32: {fp32} "
            "([eval_speed.md](eval_speed.md))."
        )
    return ["", "## Serving and evaluation throughput (their own scripts, same folder)", "", *lines] if lines else []


def eval_speed_on_this_cpu(path: Path, facts: dict) -> float | None:
    """bench_eval_speed.py's headline ratio from its results in --out, if they were measured on this CPU kind (same
    model name and flags); else None, so a summary never mixes machines."""
    if not path.exists():
        return None
    measured = json.loads(path.read_text())
    if measured.get("cpu") != facts or "ratios_same_dtype" not in measured:
        return None
    from bench_eval_speed import headline

    return headline(measured)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--weight-format",
        default="auto",
        help="llama.cpp weights: auto (the GGUF as shipped), q4_0, q4_k_m, q8_0, f16, f32",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--questions", type=int, default=8, help="short questions for the stack latency step")
    ap.add_argument("--parity-prompts", type=int, default=8)
    ap.add_argument("--parity-tasks", default="all", help="comma list for the accuracy parity ('none' to skip)")
    ap.add_argument("--parity-limit", type=int, default=100)
    ap.add_argument("--no-stack", action="store_true", help="skip the stack latency step")
    ap.add_argument("--no-hf-stack", action="store_true", help="time the stack on llama.cpp only")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes to check the script runs (not results)")
    ap.add_argument(
        "--stack-only", action="store_true", help="re-measure only the stack latency step of the results in --out"
    )
    ap.add_argument(
        "--prefix-ab", action="store_true", help="with --stack-only: also time the stack with stage-head reuse off/on"
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md and engine.png from the saved results.json and summary.json (after bench_serve/bench_eval_speed)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine")
    args = ap.parse_args(argv)
    if args.report_only:
        saved, summary = (json.loads((args.out / name).read_text()) for name in ("results.json", "summary.json"))
        (args.out / "RESULTS.md").write_text(markdown(saved, summary, args.out))
        plot(saved, args.out / "engine.png")
        return 0
    if args.smoke:
        args.new_tokens, args.batch, args.repeats, args.parity_prompts, args.parity_limit = 8, 4, 1, 2, 2
        if args.parity_tasks == "all":
            args.parity_tasks = "arc_easy,piqa"
    os.environ["FSLM_THREADS"] = str(args.threads)  # before fslm reads its settings
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))

    import torch

    torch.set_num_threads(args.threads)
    from fslm.engine.hf import HFEngine
    from fslm.engine.llamacpp import LlamaCppEngine, gguf_weight_bytes

    args.out.mkdir(parents=True, exist_ok=True)
    facts = cpu_facts()
    bandwidth = copy_bandwidth()
    results: dict = {
        "smoke": args.smoke,
        "model": args.model,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "cpu": facts,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_convention": "numpy copy, (bytes read + bytes written) / s, best of 7, 256 MiB, one thread",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"cpu: {cpu_label(facts)}; copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)

    hf = HFEngine.from_ref(args.model, batch_size=args.batch)
    fast = LlamaCppEngine.from_ref(
        args.model, weight_format=args.weight_format, threads=args.threads, batch_size=args.batch
    )
    import importlib.metadata as md

    results["versions"] = {
        name: md.version(pkg)
        for name, pkg in (("llama_cpp", "llama-cpp-python"), ("torch", "torch"), ("transformers", "transformers"))
    }
    results["llama_cpp_build"] = llama_build()
    prompts_b16 = (LONG_PROMPTS * ((args.batch + len(LONG_PROMPTS) - 1) // len(LONG_PROMPTS)))[: args.batch]
    measured = (
        ()
        if args.stack_only
        else (
            ("hf", hf, weight_bytes_hf(hf), "fp32"),
            ("llamacpp", fast, gguf_weight_bytes(fast.gguf_path), fast.weight_format),
        )
    )
    if args.stack_only:
        earlier = json.loads((args.out / "results.json").read_text())
        results = {**earlier, "stack_remeasured": results["started"], "stack_cpu": facts}
    for key, engine, nbytes, fmt in measured:
        print(f"{key}: decode batch 1 ...", flush=True)
        b1 = decode_rate(engine, LONG_PROMPTS[:1], args.new_tokens, args.repeats)
        print(f"{key}: decode batch {args.batch} ...", flush=True)
        b16 = decode_rate(engine, prompts_b16, args.new_tokens, args.repeats)
        bound = bandwidth / nbytes
        results[key] = {
            "weight_format": fmt,
            "weight_bytes": nbytes,
            "bound_tok_s": bound,
            "decode_b1": b1,
            "decode_b16": b16,
            "fraction_of_bound": b1["tok_s"] / bound,
        }
        print(
            f"{key}: b1 {b1['tok_s']:.1f} tok/s ({b1['tok_s'] / bound:.0%} of bound), b{args.batch} {b16['tok_s']:.1f}"
        )
    if not args.no_stack:
        for key, engine in (("llamacpp", fast), ("hf", hf)):
            if key == "hf" and args.no_hf_stack:
                continue
            print(f"{key}: default stack latency ...", flush=True)
            results[key]["stack"] = stack_latency(engine, PARITY_PROMPTS[: args.questions], args.repeats)
            if args.prefix_ab:
                print(f"{key}: stage-head reuse off/on ...", flush=True)
                results[key]["prefix_ab"] = prefix_ab(engine, PARITY_PROMPTS[: args.questions], args.repeats)
    if not args.stack_only:
        print("parity ...", flush=True)
        results["text_parity"] = text_parity(fast, hf, args.parity_prompts, args.new_tokens)
    if args.parity_tasks != "none" and not args.stack_only:
        results["eval_parity"] = eval_parity(fast, hf, args.parity_tasks, args.parity_limit, args.out)

    ll = results["llamacpp"]
    summary = {
        "cpu": cpu_label(facts),
        "engine": "llamacpp",
        "weight_format": ll["weight_format"],
        "decode_b1_tok_s": round(ll["decode_b1"]["tok_s"], 2),
        "decode_b1_fraction_of_bound": round(ll["fraction_of_bound"], 3),
        "decode_b16_vs_hf": round(ll["decode_b16"]["tok_s"] / results["hf"]["decode_b16"]["tok_s"], 3),
        "stack_p50_seconds": round(ll["stack"]["stack_p50_seconds"], 3) if "stack" in ll else None,
        "stack_vs_base_latency": round(ll["stack"]["stack_vs_base_latency"], 3) if "stack" in ll else None,
        "serve_ratio": None,  # not measured here: needs `fslm serve --engine llamacpp` (benchmarks/bench_serve.py)
        "eval_vs_lmeval": None,  # not measured here: needs lm-eval's HF backend timed on the same items
        "parity_ci_includes_zero": results["eval_parity"]["ci_includes_zero"] if "eval_parity" in results else None,
    }
    if args.stack_only and (args.out / "summary.json").exists():
        # What other scripts wrote into the saved summary.json (bench_serve's serve_ratio) stays.
        saved = json.loads((args.out / "summary.json").read_text())
        for key in ("serve_ratio", "eval_vs_lmeval"):
            summary[key] = saved.get(key)
    summary["eval_vs_lmeval"] = eval_speed_on_this_cpu(args.out / "eval_speed.json", facts) or summary["eval_vs_lmeval"]
    assert tuple(summary) == SUMMARY_KEYS
    results["summary"] = summary
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(results, summary, args.out))
    plot(results, args.out / "engine.png")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
