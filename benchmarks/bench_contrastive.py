"""Contrastive decoding vs greedy on GSM8K: final-number accuracy and repetition.

    .venv/bin/python benchmarks/bench_contrastive.py [--expert qwen2.5-coder-1.5b] [--amateur qwen2.5-coder-0.5b] \
        [--limit 50] [--alpha 0.1] [--max-new-tokens 256]

The expert/amateur pair must share a tokenizer: Qwen2.5-Coder-1.5B (expert) and -0.5B (amateur) are the only such
pair among the offline models (SmolLM2 and Gemma each have their own vocabulary). Both decoders get the same chat
prompt; greedy is the expert alone through `Engine.generate`. Per-item outputs are cached under --work (resumable).
Outputs: benchmarks/results/collaborate/contrastive.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fslm.collaborate.contrastive import ContrastiveParams, contrastive_generate, final_number, repeated_ngram_fraction  # noqa: E402
from fslm.engine import GenerationParams, load_engine  # noqa: E402
from fslm.evaluate.scoring import numbers_match  # noqa: E402
from fslm.io import write_atomic, write_json, write_jsonl  # noqa: E402
from fslm.settings import get_settings  # noqa: E402
from fslm.tasks import load_task  # noqa: E402

INSTRUCTION = "Solve this math word problem step by step. End with a line of the form 'The answer is <number>.'"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {r["id"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def run_method(name: str, items, texts, decode, cache_path: Path, batch: int) -> list[dict]:
    done = load_cache(cache_path)
    todo = [i for i, it in enumerate(items) if it.id not in done]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        t0 = time.perf_counter()
        gens = decode([texts[i] for i in chunk])
        for i, g in zip(chunk, gens):
            pred = final_number(g.text)
            done[items[i].id] = {
                "id": items[i].id,
                "gold": items[i].gold,
                "prediction": pred,
                "correct": numbers_match(pred, str(items[i].gold)),
                "text": g.text,
                "tokens_out": g.tokens_out,
                "finish_reason": g.finish_reason,
                "repeated_4gram": round(repeated_ngram_fraction(g.text), 4),
                "seconds": round(g.seconds, 3),
            }
        write_jsonl(cache_path, [done[it.id] for it in items if it.id in done])
        log(
            f"{name}: {len([it for it in items if it.id in done])}/{len(items)} ({time.perf_counter() - t0:.0f}s for {len(chunk)})"
        )
    return [done[it.id] for it in items]


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "n": n,
        "acc": round(sum(r["correct"] for r in rows) / n, 4),
        "repeated_4gram": round(sum(r["repeated_4gram"] for r in rows) / n, 4),
        "loops": sum(r["repeated_4gram"] > 0.2 for r in rows),
        "hit_length_limit": sum(r["finish_reason"] == "length" for r in rows),
        "no_number": sum(r["prediction"] is None for r in rows),
        "tokens_out_per_item": round(sum(r["tokens_out"] for r in rows) / n, 1),
        "seconds_per_item": round(sum(r["seconds"] for r in rows) / n, 3),
    }


def plot(result: dict, path: Path) -> None:
    """Accuracy and repetition side by side: contrastive decoding is meant to raise the first and lower the second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, colors = ["greedy", "contrastive"], ["#98a2b3", "#4f46e5"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, title in ((axes[0], "acc", "GSM8K accuracy"), (axes[1], "repeated_4gram", "repeated word 4-grams")):
        values = [result[n][key] for n in names]
        ax.bar(names, values, color=colors)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.3f}", ha="center", va="bottom")
        ax.set_title(f"{title} (n={result['n']})")
    fig.suptitle(f"{result['expert']} - {result['amateur']}, alpha {result['alpha']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert", default="qwen2.5-coder-1.5b")
    ap.add_argument("--amateur", default="qwen2.5-coder-0.5b")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--amateur-temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--work", type=Path, default=get_settings().cache_dir / "bench" / "contrastive")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "collaborate")
    ap.add_argument("--replot", action="store_true", help="only redraw contrastive.png from contrastive.json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((args.out / "contrastive.json").read_text()), args.out / "contrastive.png")
        return
    items = load_task("gsm8k", limit=args.limit)
    expert = load_engine(args.expert, dtype=args.dtype)
    texts = [expert.render_chat([{"role": "user", "content": f"{INSTRUCTION}\n\n{it.question}"}]) for it in items]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    tag = f"{args.expert}-{args.dtype}-{args.max_new_tokens}"
    greedy = run_method(
        "greedy", items, texts, lambda t: expert.generate(t, params), args.work / f"greedy-{tag}.jsonl", args.batch
    )
    amateur = load_engine(args.amateur, dtype=args.dtype)
    cd = ContrastiveParams(alpha=args.alpha, amateur_temperature=args.amateur_temperature)
    cd_rows = run_method(
        "contrastive",
        items,
        texts,
        lambda t: contrastive_generate(expert, amateur, t, params, cd, batch_size=args.batch),
        args.work / f"contrastive-{tag}-{args.amateur}-a{args.alpha}-t{args.amateur_temperature}.jsonl",
        args.batch,
    )
    g, c = summarize(greedy), summarize(cd_rows)
    both = sum(a["correct"] and b["correct"] for a, b in zip(greedy, cd_rows))
    result = {
        "task": "gsm8k",
        "split": "test",
        "n": len(items),
        "expert": args.expert,
        "amateur": args.amateur,
        "alpha": args.alpha,
        "amateur_temperature": args.amateur_temperature,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "prompt": INSTRUCTION,
        "greedy": g,
        "contrastive": c,
        "agreement": {
            "both_correct": both,
            "only_greedy": sum(a["correct"] and not b["correct"] for a, b in zip(greedy, cd_rows)),
            "only_contrastive": sum(b["correct"] and not a["correct"] for a, b in zip(greedy, cd_rows)),
        },
    }
    write_json(args.out / "contrastive.json", result)
    lines = [
        f"# Contrastive decoding on GSM8K ({len(items)} test items)",
        "",
        f"Expert {args.expert}, amateur {args.amateur} (same tokenizer), alpha {args.alpha}, amateur temperature "
        f"{args.amateur_temperature}, {args.dtype}, zero-shot chat prompt, up to {args.max_new_tokens} new tokens. Accuracy = "
        "exact match of the final number; repeated 4-grams = share of word 4-grams already seen in the same output; loops = "
        "outputs with more than 20% repeated 4-grams.",
        "",
        "| decoding | accuracy | repeated 4-grams | loops | hit length limit | no number | tokens/item | s/item |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in (("greedy (expert alone)", g), ("contrastive", c)):
        lines.append(
            f"| {name} | {s['acc']:.3f} | {s['repeated_4gram']:.3f} | {s['loops']} | {s['hit_length_limit']} | "
            f"{s['no_number']} | {s['tokens_out_per_item']} | {s['seconds_per_item']} |"
        )
    a = result["agreement"]
    lines += [
        "",
        f"Both right on {a['both_correct']} items; only greedy right on {a['only_greedy']}; only contrastive right on {a['only_contrastive']}.",
    ]
    write_atomic(args.out / "contrastive.md", "\n".join(lines) + "\n")
    plot(result, args.out / "contrastive.png")
    log(json.dumps({"greedy": g, "contrastive": c}))


if __name__ == "__main__":
    main()
