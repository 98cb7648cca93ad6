"""Generative check: do stacks answer free-form instructions as well as their base model?

Multiple-choice accuracy reads option log-likelihoods; a chat stack must also write answers. This benchmark takes
instructions from the shared Alpaca sample that no stage was trained on, lets each system answer them, and scores
the answers two ways:

* against the gold output: ROUGE-L and all-MiniLM-L6-v2 cosine (fslm.evaluate.metrics);
* by pairwise preference of a larger judge (fslm.evaluate.judge: both orders, reference-guided), reported as the win
  rate of one system over another (ties = 1/2) with a percentile-bootstrap CI over items.

Steps (each resumable: a rerun skips what is written):

    python benchmarks/bench_generative.py items                      # the instructions (items.jsonl)
    python benchmarks/bench_generative.py answer --system base --stack benchmarks/experiments/stacks/base-chat.yaml
    python benchmarks/bench_generative.py answer --system default    # the packaged default stack
    python benchmarks/bench_generative.py judge --pair default:base --judge qwen2.5-coder-1.5b
    python benchmarks/bench_generative.py rate --system default     # pointwise P(Yes) per answer (no position bias)
    python benchmarks/bench_generative.py summary                    # summary.json, summary.md, winrates.png

Held out: the Alpaca records fslm distils from are the first ones of random_9k.json (the reproduction used the first
2000); items are drawn with a fixed seed from records after index `--skip`, and any whose instruction text also
occurs among the first `--skip` records is dropped.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

from fslm.engine import load_engine
from fslm.evaluate.judge import judge_pairs, rate_answers
from fslm.evaluate.metrics import score_pairs
from fslm.evaluate.stats import bootstrap_ci
from fslm.io import append_jsonl, read_jsonl, write_atomic, write_json, write_jsonl
from fslm.stack import Stack
from fslm.tasks.instructions import load_instructions

OUT = Path(__file__).parent / "results" / "stacks" / "generative"
METRICS = ("rougeL", "minilm")
BATCH = 8


def read_rows(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def select_items(n: int, skip: int, seed: int) -> list[dict]:
    records, _ = load_instructions()
    trained = {r.prompt.strip().lower() for r in records[:skip]}
    pool = [r for r in records[skip:] if r.gold and r.prompt.strip().lower() not in trained]
    picked = sorted(random.Random(seed).sample(range(len(pool)), n))
    return [
        {"id": pool[i].id, "index": pool[i].index, "prompt": pool[i].prompt, "reference": pool[i].gold} for i in picked
    ]


def answer(out: Path, system: str, stack: str | None, limit: int | None) -> None:
    items = read_rows(out / "items.jsonl")[:limit]
    path = out / f"answers-{system}.jsonl"
    done = {r["id"] for r in read_rows(path)}
    todo = [it for it in items if it["id"] not in done]
    if not todo:
        print(f"{system}: all {len(items)} answered")
        return
    st = Stack.load(stack)
    print(f"{system}: {len(todo)} to answer with {st.config.name} on {type(st.engine).__name__}", flush=True)
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        t0 = time.perf_counter()
        results = st.run_batch([it["prompt"] for it in batch])
        wall = time.perf_counter() - t0
        rows = []
        for it, res in zip(batch, results, strict=True):
            d = res.to_dict()
            rows.append(
                {
                    "id": it["id"],
                    "answer": res.answer,
                    "stages": {r["stage"]: r["output"] for r in d["trace"] if r.get("skipped") is None},
                    "tokens_in": d["tokens_in"],
                    "tokens_out": d["tokens_out"],
                    "seconds": d["seconds"],
                    "batch_wall_seconds": round(wall / len(batch), 4),
                }
            )
        append_jsonl(path, rows)
        print(f"{system}: {len(done) + start + len(batch)}/{len(items)}", flush=True)


def judge(out: Path, pair: str, judge_model: str, backend: str) -> None:
    x, y = pair.split(":")
    items = {it["id"]: it for it in read_rows(out / "items.jsonl")}
    ax = {r["id"]: r["answer"] for r in read_rows(out / f"answers-{x}.jsonl")}
    ay = {r["id"]: r["answer"] for r in read_rows(out / f"answers-{y}.jsonl")}
    path = out / f"judge-{x}-vs-{y}.jsonl"
    done = {r["id"] for r in read_rows(path)}
    ids = [i for i in items if i in ax and i in ay and i not in done]
    if not ids:
        print(f"{pair}: all judged")
        return
    engine = load_engine(judge_model, backend=backend)
    print(f"{pair}: {len(ids)} to judge with {judge_model} on {type(engine).__name__}", flush=True)
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        verdicts = judge_pairs(
            engine,
            [items[i]["prompt"] for i in chunk],
            [items[i]["reference"] for i in chunk],
            [ax[i] for i in chunk],
            [ay[i] for i in chunk],
        )
        rows = [
            {
                "id": i,
                "p_first": round(v.p_first, 6),
                "p_second": round(v.p_second, 6),
                "identical": v.identical,
                "preference": round(v.preference, 6),
                "verdict": v.verdict,
            }
            for i, v in zip(chunk, verdicts, strict=True)
        ]
        append_jsonl(path, rows)
        print(f"{pair}: {len(done) + start + len(chunk)}/{len(items)}", flush=True)


def rate(out: Path, system: str, judge_model: str, backend: str, limit: int | None = None) -> None:
    """Pointwise P(Yes) of each of a system's answers (no position to be biased by); the first `limit` items."""
    items = {it["id"]: it for it in read_rows(out / "items.jsonl")[:limit]}
    answers = {r["id"]: r["answer"] for r in read_rows(out / f"answers-{system}.jsonl")}
    path = out / f"rate-{system}.jsonl"
    done = {r["id"] for r in read_rows(path)}
    ids = [i for i in items if i in answers and i not in done]
    if not ids:
        print(f"{system}: all rated")
        return
    engine = load_engine(judge_model, backend=backend)
    print(f"{system}: {len(ids)} to rate with {judge_model} on {type(engine).__name__}", flush=True)
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        p_yes = rate_answers(
            engine,
            [items[i]["prompt"] for i in chunk],
            [items[i]["reference"] for i in chunk],
            [answers[i] for i in chunk],
        )
        append_jsonl(path, [{"id": i, "p_yes": round(p, 6)} for i, p in zip(chunk, p_yes, strict=True)])
        print(f"{system} rated: {len(done) + start + len(chunk)}/{len(items)}", flush=True)


def _mean_ci(values: list[float]) -> dict:
    lo, hi = bootstrap_ci(values)
    return {"mean": round(float(np.mean(values)), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def summarize(out: Path, judge_model: str) -> dict:
    from bench_engine import cpu_facts  # run as a script: benchmarks/ is on sys.path

    items = read_rows(out / "items.jsonl")
    refs = {it["id"]: it["reference"] for it in items}
    systems: dict[str, dict] = {}
    per_item: dict[str, dict[str, dict[str, float]]] = {}  # system -> metric -> id -> value
    for path in sorted(out.glob("answers-*.jsonl")):
        name = path.stem.removeprefix("answers-")
        rows = [r for r in read_rows(path) if r["id"] in refs]
        values = score_pairs(list(METRICS), [r["answer"] for r in rows], [refs[r["id"]] for r in rows])
        per_item[name] = {m: {r["id"]: v for r, v in zip(rows, values[m], strict=True)} for m in METRICS}
        systems[name] = {
            "n": len(rows),
            **{m: _mean_ci(values[m]) for m in METRICS},
            "words_per_answer": round(float(np.mean([len(r["answer"].split()) for r in rows])), 1),
            "seconds_per_item": round(float(np.mean([r["seconds"] for r in rows])), 4),
            "tokens_out_per_item": round(float(np.mean([r["tokens_out"] for r in rows])), 1),
        }
    pairs: dict[str, dict] = {}
    for path in sorted(out.glob("judge-*-vs-*.jsonl")):
        rows = read_rows(path)
        verdicts = [r["verdict"] for r in rows]
        lo, hi = bootstrap_ci(verdicts)
        pairs[path.stem.removeprefix("judge-")] = {
            "n": len(rows),
            "win_rate": round(float(np.mean(verdicts)), 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "wins": sum(v == 1.0 for v in verdicts),
            "ties": sum(v == 0.5 for v in verdicts),
            "losses": sum(v == 0.0 for v in verdicts),
            "identical": sum(bool(r["identical"]) for r in rows),
            "preference": _mean_ci([r["preference"] for r in rows]),
            "position_agreement": round(
                float(np.mean([(r["p_first"] > 0.5) == (r["p_second"] > 0.5) for r in rows if not r["identical"]])), 4
            )
            if any(not r["identical"] for r in rows)
            else None,
        }
    reference_diffs: dict[str, dict] = {}  # paired: the same items, x's metric minus y's
    for y in per_item:
        if y != "default" and "default" in per_item:
            entry = {}
            for m in METRICS:
                shared = sorted(per_item["default"][m].keys() & per_item[y][m].keys())
                diff = [per_item["default"][m][i] - per_item[y][m][i] for i in shared]
                lo, hi = bootstrap_ci(diff)
                entry[m] = {
                    "n": len(shared),
                    "diff": round(float(np.mean(diff)), 4),
                    "ci95": [round(lo, 4), round(hi, 4)],
                }
            reference_diffs[f"default-vs-{y}"] = entry
    rated = {
        p.stem.removeprefix("rate-"): {r["id"]: r["p_yes"] for r in read_rows(p)} for p in out.glob("rate-*.jsonl")
    }
    for name, p_yes in rated.items():
        if name in systems:
            systems[name]["judge_p_yes"] = _mean_ci(list(p_yes.values()))
    rated_pairs: dict[str, dict] = {}
    for x in rated:
        for y in rated:
            if x != y and (x == "default" or f"{x}-vs-{y}" in pairs):
                shared = sorted(rated[x].keys() & rated[y].keys())
                wins = [1.0 if rated[x][i] > rated[y][i] else 0.0 if rated[x][i] < rated[y][i] else 0.5 for i in shared]
                lo, hi = bootstrap_ci(wins)
                diff = [rated[x][i] - rated[y][i] for i in shared]
                dlo, dhi = bootstrap_ci(diff)
                rated_pairs[f"{x}-vs-{y}"] = {
                    "n": len(shared),
                    "win_rate": round(float(np.mean(wins)), 4),
                    "ci95": [round(lo, 4), round(hi, 4)],
                    "p_yes_diff": round(float(np.mean(diff)), 4),
                    "p_yes_diff_ci95": [round(dlo, 4), round(dhi, 4)],
                }
    return {
        "n_items": len(items),
        "judge": judge_model,
        "pointwise": rated_pairs,
        "reference_diffs": reference_diffs,
        "metrics": list(METRICS),
        "systems": systems,
        "pairs": pairs,
        "cpu": cpu_facts(),
    }


def summary_markdown(s: dict) -> str:
    lines = [
        "# Generative check: free-form Alpaca instructions no stage was trained on",
        "",
        f"{s['n_items']} instructions. Reference metrics against the gold output (mean, 95% bootstrap CI):",
        "",
        "| system | n | ROUGE-L | MiniLM cosine | words/answer | tokens out/item |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in s["systems"].items():
        r, c = m["rougeL"], m["minilm"]
        lines.append(
            f"| {name} | {m['n']} | {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
            f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}] | {m['words_per_answer']} | "
            f"{m['tokens_out_per_item']} |"
        )
    if s.get("reference_diffs"):
        lines += ["", "Paired differences on the same items (mean, 95% bootstrap CI):", ""]
        lines += ["| pair | ROUGE-L | MiniLM cosine |", "|---|---|---|"]
        for name, d in s["reference_diffs"].items():
            r, c = d["rougeL"], d["minilm"]
            lines.append(
                f"| {name} | {r['diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | "
                f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] |"
            )
    lines += [
        "",
        f"Pairwise preference of {s['judge']} (both orders, reference-guided; a win needs both orders, ties = 1/2):",
        "",
        "| pair (x vs y) | n | win rate of x | 95% CI | wins / ties / losses | identical | mean P(x better) | "
        "orders agree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in s["pairs"].items():
        lines.append(
            f"| {name} | {p['n']} | {p['win_rate']:.3f} | [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | "
            f"{p['wins']} / {p['ties']} / {p['losses']} | {p['identical']} | {p['preference']['mean']:.3f} | "
            f"{p['position_agreement']} |"
        )
    if s.get("pointwise"):
        lines += [
            "",
            f"Pointwise: {s['judge']}'s P(Yes) that an answer is correct, relevant and helpful (reference-guided, one "
            "answer at a time, so no position bias); x wins an item when its P(Yes) is higher:",
            "",
            "| pair (x vs y) | n | win rate of x | 95% CI | mean P(Yes) x - y | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in s["pointwise"].items():
            lines.append(
                f"| {name} | {p['n']} | {p['win_rate']:.3f} | [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | "
                f"{p['p_yes_diff']:+.3f} | [{p['p_yes_diff_ci95'][0]:+.3f}, {p['p_yes_diff_ci95'][1]:+.3f}] |"
            )
    return "\n".join(lines) + "\n"


def winrate_png(s: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(s["pairs"])
    rates = [s["pairs"][n]["win_rate"] for n in names]
    err = [
        [r - s["pairs"][n]["ci95"][0] for n, r in zip(names, rates, strict=True)],
        [s["pairs"][n]["ci95"][1] - r for n, r in zip(names, rates, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.6 * max(len(names), 1)))
    ax.barh(names, rates, xerr=err, color="#4c72b0", capsize=4)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"win rate of x over y (judge: {s['judge']}; 0.5 = even)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    sub = parser.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("items", help="choose the held-out instructions")
    i.add_argument("-n", type=int, default=200)
    i.add_argument("--skip", type=int, default=2000, help="records at the start of the file that training may use")
    i.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("answer", help="one system's answers")
    a.add_argument("--system", required=True)
    a.add_argument("--stack", default=None, help="stack YAML (default: the packaged default stack)")
    a.add_argument("--limit", type=int, default=None)
    j = sub.add_parser("judge", help="pairwise preference of a judge model, both orders")
    j.add_argument("--pair", required=True, help="X:Y, two systems already answered")
    j.add_argument("--judge", default="qwen2.5-coder-1.5b")
    j.add_argument("--engine", default="auto")
    r = sub.add_parser("rate", help="pointwise P(Yes) of one system's answers")
    r.add_argument("--system", required=True)
    r.add_argument("--judge", default="qwen2.5-coder-1.5b")
    r.add_argument("--engine", default="auto")
    r.add_argument("--limit", type=int, default=None, help="the first N items (a random sample, as items.jsonl is)")
    s = sub.add_parser("summary", help="summary.json, summary.md, winrates.png")
    s.add_argument("--judge", default="qwen2.5-coder-1.5b")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "items":
        path = out / "items.jsonl"
        if path.exists():
            print(f"error: {path} exists; delete it to choose items again", file=sys.stderr)
            return 2
        rows = select_items(args.n, args.skip, args.seed)
        write_jsonl(path, rows)
        print(f"{len(rows)} items -> {path}")
    elif args.cmd == "answer":
        answer(out, args.system, args.stack, args.limit)
    elif args.cmd == "judge":
        if args.pair.count(":") != 1:
            print("error: --pair must be X:Y", file=sys.stderr)
            return 2
        judge(out, args.pair, args.judge, args.engine)
    elif args.cmd == "rate":
        rate(out, args.system, args.judge, args.engine, args.limit)
    else:
        summary = summarize(out, args.judge)
        write_json(out / "summary.json", summary)
        write_atomic(out / "summary.md", summary_markdown(summary))
        if summary["pairs"]:
            write_atomic(out / "winrates.png", winrate_png(summary))
        print(summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
