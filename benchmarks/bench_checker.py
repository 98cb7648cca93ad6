"""Can a small model flag false free-form answers? SmolLM2-135M as a plug-in hallucination checker on TruthfulQA.

    FSLM_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_checker.py [--models smollm2-135m,qwen2.5-coder-0.5b]

Items: every (question, answer) pair of $FSLM_DATA_DIR/truthfulqa/mc_task.json's mc2_targets (loaded by fslm's
truthfulqa_mc2 loader); label "unsupported" = an incorrect answer (target 0). Split by question: the first 100
questions are held-out (temperature and threshold are fitted there), the rest are the test items every number below
is reported on.

Checkers (fslm.collaborate.checker.p_supported: P(" yes") vs P(" no") after a fixed raw prompt):
* `<model>`: no passages ("Is the answer true?").
* `<model>+bm25`: the 3 BM25 passages retrieved for the question ("Is the answer supported by these passages?") from
  fslm's default retrieval corpus (fslm.retrieve.corpus.build_corpus: train/dev splits of the other tasks + Alpaca,
  decontaminated against every evaluation item; TruthfulQA has no other split, so none of it is in the corpus), each
  passage cut to --passage-chars characters. Same passages for every answer to a question.

Flag rule: unsupported when the temperature-scaled P(supported) < threshold; T fitted by NLL on the held-out items,
then the threshold maximising F1 of "unsupported" on them (fit_checker). Baselines, also fitted on held-out items:
flag everything; a length-only rule (flag answers shorter, or longer, than a word count). Reported on test items:
precision / recall / F1 of the flag, flag rate, AUROC of 1 - P(supported) for "unsupported", ECE (10 bins) of
P(supported) against "supported" before and after temperature scaling; 95% CIs by a percentile bootstrap over
questions (whole questions resampled, the same resamples for every system, so F1 differences are paired).
Outputs: benchmarks/results/helpers/checker.{json,md,png} and checker_items.jsonl (every item's probabilities).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from bench_engine import cpu_facts, cpu_label  # noqa: E402

from fslm.collaborate.checker import CheckItem, auroc, best_cut, fit_checker, flag_scores, p_supported  # noqa: E402
from fslm.evaluate.calibration import DEFAULT_BINS, Bin, ece, reliability, reliability_plot  # noqa: E402
from fslm.evaluate.stats import N_BOOT, group_bootstrap  # noqa: E402
from fslm.io import jsonl_bytes, write_atomic, write_json  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "helpers"
TASK = "truthfulqa_mc2"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def r6(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def load_pairs(limit: int | None) -> tuple[list[dict], int]:
    """One row per (question, answer) of the mc2 targets, in file order; and the number of questions."""
    from fslm.tasks import load_task

    items = load_task(TASK)[:limit] if limit else load_task(TASK)
    rows = []
    for qi, item in enumerate(items):
        gold = set(item.gold_set)
        for ai, answer in enumerate(item.choices):
            rows.append({"q": qi, "a": ai, "question": item.question, "answer": answer, "unsupported": ai not in gold})
    return rows, len(items)


def retrieve(questions: list[str], k: int, chars: int) -> tuple[list[tuple[str, ...] | None], dict]:
    """k BM25 passages per question from the default decontaminated corpus (built in memory)."""
    from fslm.retrieve import Retriever
    from fslm.retrieve.corpus import build_corpus

    t0 = time.perf_counter()
    passages, stats = build_corpus()
    leaked = [p.id for p in passages if p.id.startswith("truthfulqa")]
    assert not leaked, f"TruthfulQA passages in the corpus: {leaked[:3]}"
    index = Retriever.build(passages, "bm25")
    hits = index.search(questions, k)
    out = [tuple(h.passage.text[:chars].strip() for h in row) or None for row in hits]
    info = {
        "corpus_passages": len(passages),
        "corpus_sources": {s: st.to_dict() for s, st in stats.items()},
        "k": k,
        "passage_chars": chars,
        "questions_without_hits": sum(p is None for p in out),
        "questions_with_fewer_than_k": sum(p is not None and len(p) < k for p in out),
        "hit_sources": dict(sorted(_count(h.passage.id.split("/")[0] for row in hits for h in row).items())),
        "build_and_search_seconds": round(time.perf_counter() - t0, 1),
        "example": {"question": questions[0], "passages": list(out[0] or ())},
    }
    return out, info


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def score_all(engine, rows: list[dict], passages: list[tuple[str, ...] | None] | None) -> tuple[np.ndarray, float]:
    """P(supported) of every row (passages per question, or none) and the seconds it took. One call per question:
    its answers share the prompt up to the answer (passages + question), which the hf engine then runs once."""
    by_q: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_q.setdefault(r["q"], []).append(i)
    probs = np.full(len(rows), np.nan)
    t0, done, last = time.perf_counter(), 0, 0.0
    for qi, idx in by_q.items():
        ps = passages[qi] if passages else None
        probs[idx] = p_supported(engine, [CheckItem(rows[i]["question"], rows[i]["answer"], ps) for i in idx])
        done += len(idx)
        elapsed = time.perf_counter() - t0
        if elapsed - last > 60 or done == len(rows):
            last = elapsed
            rate = done / elapsed
            log(f"  {done}/{len(rows)} items ({rate:.2f}/s, ~{(len(rows) - done) / rate / 60:.1f} min left)")
    return probs, time.perf_counter() - t0


def length_rule(words: np.ndarray, y: np.ndarray) -> dict:
    """The F1-best word-count rule on held-out items: flag answers shorter than a cut, or longer than one."""
    short, long = best_cut(words, y), best_cut(-words, y)
    if long.f1 > short.f1:
        return {"direction": "longer", "threshold_words": -long.threshold, "heldout_f1": long.f1, "sign": -1.0}
    return {"direction": "shorter", "threshold_words": short.threshold, "heldout_f1": short.f1, "sign": 1.0}


def evaluate(rows: list[dict], probs: dict[str, np.ndarray], n_heldout: int, n_boot: int) -> dict:
    q = np.asarray([r["q"] for r in rows])
    y = np.asarray([r["unsupported"] for r in rows])
    words = np.asarray([len(r["answer"].split()) for r in rows], dtype=np.float64)
    held, test = q < n_heldout, q >= n_heldout
    yt = y[test]
    systems: dict[str, dict] = {}
    flags: dict[str, np.ndarray] = {"flag everything": np.ones(int(test.sum()), dtype=bool)}
    signals: dict[str, np.ndarray] = {}  # higher = more likely unsupported, for AUROC
    calib: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, p in probs.items():
        fit = fit_checker(p[held], y[held])
        before, after = p[test], np.asarray(fit.scale(p[test]))
        flags[name] = after < fit.threshold
        signals[name] = 1.0 - before
        calib[name] = (before, after)
        systems[name] = {"fit": fit.to_dict()}
    rule = length_rule(words[held], y[held])
    flags["length rule"] = rule["sign"] * words[test] < rule["sign"] * rule["threshold_words"]
    signals["length rule"] = -rule["sign"] * words[test]
    systems["length rule"] = {"fit": {k: (r6(v) if isinstance(v, float) else v) for k, v in rule.items()}}
    systems["flag everything"] = {"fit": {}}
    checkers = list(probs)

    def stats(idx: np.ndarray) -> dict:
        out = {}
        for name, f in flags.items():
            out[f"{name}/precision"], out[f"{name}/recall"], out[f"{name}/f1"] = flag_scores(f[idx], yt[idx])
        for name, s in signals.items():
            out[f"{name}/auroc"] = auroc(s[idx], yt[idx])
        for name in checkers:
            before, after = calib[name]
            out[f"{name}/ece_before"] = ece(before[idx], ~yt[idx])
            out[f"{name}/ece_after"] = ece(after[idx], ~yt[idx])
            for base in ("flag everything", "length rule"):
                out[f"{name}/f1 - {base}"] = out[f"{name}/f1"] - out[f"{base}/f1"]
        return out

    point = stats(np.arange(yt.size))
    t0 = time.perf_counter()
    cis = group_bootstrap(q[test], stats, n_boot=n_boot)
    log(f"bootstrap over questions: {n_boot} replicates in {time.perf_counter() - t0:.1f} s")
    for key, value in point.items():
        name, metric = key.split("/", 1)
        systems[name][metric] = r6(value)
        systems[name][f"{metric}_ci95"] = [r6(x) for x in cis[key]]
    for name, f in flags.items():
        systems[name]["flag_rate"] = r6(f.mean())
    for name in checkers:
        before, after = calib[name]
        systems[name]["mean_p_supported"] = r6(before.mean())
        systems[name]["reliability_before"] = [b.to_dict() for b in reliability(before, ~yt)]
        systems[name]["reliability_after"] = [b.to_dict() for b in reliability(after, ~yt)]
    return {
        "n_items": len(rows),
        "n_heldout_questions": n_heldout,
        "n_test_questions": int(q.max()) + 1 - n_heldout,
        "n_heldout_items": int(held.sum()),
        "n_test_items": int(test.sum()),
        "test_unsupported_rate": r6(yt.mean()),
        "heldout_unsupported_rate": r6(y[held].mean()),
        "systems": systems,
    }


def ci(e: dict, key: str) -> str:
    lo, hi = e[f"{key}_ci95"]
    return f"{e[key]:.3f} ({lo:.3f}–{hi:.3f})"


def markdown(result: dict) -> str:
    ev = result["eval"]
    m = result["machine"]
    lines = [
        "# A small model as a hallucination checker (TruthfulQA answers)",
        "",
        f"{ev['n_items']} (question, answer) pairs from `truthfulqa/mc_task.json` mc2 targets; unsupported = an "
        f"incorrect answer. Held-out: the first {ev['n_heldout_questions']} questions ({ev['n_heldout_items']} items; "
        "temperature and threshold fitted there). Test: the other "
        f"{ev['n_test_questions']} questions ({ev['n_test_items']} items, {100 * ev['test_unsupported_rate']:.1f}% "
        f"unsupported). 95% CIs: bootstrap over test questions ({result['n_boot']} replicates).",
        "",
        "| system | threshold | flag rate | precision | recall | F1 | F1 − flag everything | F1 − length rule | AUROC |",
        "|---|---|---:|---|---|---|---|---|---|",
    ]
    for name, e in ev["systems"].items():
        fit = e["fit"]
        if name == "length rule":
            thr = f"{fit['direction']} than {fit['threshold_words']:.1f} words"
        elif name == "flag everything":
            thr = "—"
        else:
            thr = f"P < {fit['threshold']:.3f} (T={fit['temperature']:.2f})"
        diffs = [ci(e, k) if f"{k}_ci95" in e else "—" for k in ("f1 - flag everything", "f1 - length rule")]
        auc = ci(e, "auroc") if "auroc" in e else "—"
        lines.append(
            f"| {name} | {thr} | {100 * e['flag_rate']:.1f}% | {ci(e, 'precision')} | {ci(e, 'recall')} | "
            f"{ci(e, 'f1')} | {diffs[0]} | {diffs[1]} | {auc} |"
        )
    lines += [
        "",
        f"## Calibration of P(supported) on test items ({DEFAULT_BINS}-bin ECE against 'supported')",
        "",
        "| checker | mean P(supported) | share supported | T | ECE before | ECE after |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, e in ev["systems"].items():
        if "ece_before" in e:
            lines.append(
                f"| {name} | {e['mean_p_supported']:.3f} | {1 - ev['test_unsupported_rate']:.3f} | "
                f"{e['fit']['temperature']:.2f} | {ci(e, 'ece_before')} | {ci(e, 'ece_after')} |"
            )
    if result.get("retrieval"):
        r = result["retrieval"]
        lines += [
            "",
            f"Retrieval: BM25 over {r['corpus_passages']} passages (fslm's default corpus, no TruthfulQA), top {r['k']} "
            f"per question, each cut to {r['passage_chars']} characters; passage sources {r['hit_sources']}; "
            f"{r['questions_without_hits']} questions without hits (checked without passages).",
        ]
    lines += ["", "## Cost", ""]
    for name, s in result["scoring"].items():
        lines.append(f"- {name}: {s['items']} items in {s['seconds']:.0f} s ({s['items_per_s']:.1f} items/s)")
    lines.append(
        f"- machine: {cpu_label(m['cpu'])}, flags {' '.join(m['cpu']['flags'])}, {m['torch_threads']} torch threads; "
        f"wall time {result['wall_seconds']:.0f} s"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m", help="comma-separated checker models")
    ap.add_argument("--retrieval", choices=("both", "none", "only"), default="both", help="checkers with BM25 passages")
    ap.add_argument("--k", type=int, default=3, help="passages per question")
    ap.add_argument("--passage-chars", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=100, help="first N questions fit temperature and threshold")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only (a quick check)")
    ap.add_argument("--boot", type=int, default=N_BOOT, help="bootstrap replicates over questions")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    start = time.perf_counter()
    import torch

    from fslm.engine import load_engine

    rows, n_questions = load_pairs(args.limit)
    if args.heldout >= n_questions:
        raise SystemExit(f"error: --heldout {args.heldout} leaves no test questions out of {n_questions}")
    log(f"{len(rows)} items from {n_questions} questions; {args.heldout} held-out questions")
    passages, retrieval = None, None
    if args.retrieval != "none":
        questions = [next(r["question"] for r in rows if r["q"] == qi) for qi in range(n_questions)]
        passages, retrieval = retrieve(questions, args.k, args.passage_chars)
        log(f"retrieval: {retrieval['corpus_passages']} passages, {retrieval['build_and_search_seconds']} s")
    probs: dict[str, np.ndarray] = {}
    scoring: dict[str, dict] = {}
    for model in args.models.split(","):
        engine = load_engine(model, dtype=args.dtype)
        variants = {"none": [None], "only": [passages], "both": [None, passages]}[args.retrieval]
        for ps in variants:
            name = model if ps is None else f"{model}+bm25"
            log(f"{name}: scoring {len(rows)} items")
            probs[name], seconds = score_all(engine, rows, ps)
            scoring[name] = {"items": len(rows), "seconds": round(seconds, 1), "items_per_s": r6(len(rows) / seconds)}
        del engine
    result = {
        "task": TASK,
        "models": args.models.split(","),
        "dtype": args.dtype,
        "limit": args.limit,
        "n_boot": args.boot,
        "retrieval": retrieval,
        "eval": evaluate(rows, probs, args.heldout, args.boot),
        "scoring": scoring,
        "machine": {"cpu": cpu_facts(), "torch_threads": torch.get_num_threads()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "checker.json", result)
    write_atomic(args.out / "checker.md", markdown(result))
    item_rows = [
        {"q": r["q"], "a": r["a"], "unsupported": r["unsupported"], **{n: r6(p[i]) for n, p in probs.items()}}
        for i, r in enumerate(rows)
    ]
    write_atomic(args.out / "checker_items.jsonl", jsonl_bytes(item_rows))
    panels = {
        f"{name} (T={e['fit']['temperature']:.2f})": {
            "before": [Bin(**b) for b in e["reliability_before"]],
            "after": [Bin(**b) for b in e["reliability_after"]],
        }
        for name, e in result["eval"]["systems"].items()
        if "reliability_before" in e
    }
    png = reliability_plot(panels, title="P(supported) on TruthfulQA test answers, T fitted on held-out questions")
    write_atomic(args.out / "checker.png", png)
    log(f"wrote {args.out}/checker.{{json,md,png}} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
