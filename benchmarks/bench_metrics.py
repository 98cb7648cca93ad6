"""Do the text metrics tell a true answer from a false one? TruthfulQA's human-written answers as the test.

    FSLM_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_metrics.py [--metrics em,rougeL,bleu,minilm,bertscore]

For every TruthfulQA question ($FSLM_DATA_DIR/truthfulqa/TruthfulQA.csv) the "Best Answer" is the reference. The
other correct answers (the "Correct Answers" list minus the best answer itself, compared after SQuAD normalisation)
are held-out true candidates; the "Incorrect Answers" list gives false candidates. Each metric scores every candidate
against the reference; per question, pairwise accuracy = the share of (true, false) candidate pairs in which the true
one scores higher (a tie counts one half), i.e. the within-question AUC. Reported: its mean over questions with a
percentile-bootstrap 95% CI (questions resampled, 10,000 replicates, seed 0), paired bootstrap differences between
metrics on the same questions, the share of tied pairs, and the same by question type (adversarial or not).
Questions without a held-out true answer or without a false one are left out (counted).
Second part: every metric on the GSM8K generations already stored in --gsm8k-runs (no model is run), against the gold
worked solution, with the AUC of each metric for telling generations with the right final number from wrong ones.
Outputs: benchmarks/results/helpers/metrics.{json,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from fslm.cpu import cpu_model  # noqa: E402
from fslm.evaluate.metrics import DESCRIPTIONS, check_available, normalize_answer, parse_metrics, score_pairs  # noqa: E402
from fslm.evaluate.stats import bootstrap_ci, paired_bootstrap  # noqa: E402
from fslm.io import read_text, write_atomic, write_json  # noqa: E402
from fslm.settings import get_settings  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "helpers"
CSV_FILE = "truthfulqa/TruthfulQA.csv"
# GSM8K generations already on disk (the first 300 test items): a model alone, a larger model, the trained stack
GSM8K_RUNS = (
    "benchmarks/results/fslm_repro/runs/base",
    "benchmarks/results/fslm_repro/runs/model-qwen2.5-coder-0.5b",
    "benchmarks/results/fslm_repro/runs/stack-trained",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split_answers(field: str) -> list[str]:
    return [a.strip() for a in field.split(";") if a.strip()]


def load_questions(path: Path) -> tuple[list[dict], dict]:
    """One entry per usable question: reference, held-out true candidates, false candidates, type."""
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    out, skipped = [], {"no_heldout_true": 0, "no_false": 0}
    for k, row in enumerate(rows):
        best = row["Best Answer"].strip()
        seen = {normalize_answer(best)}
        true = []
        for answer in split_answers(row["Correct Answers"]):
            key = normalize_answer(answer)
            if key not in seen:
                seen.add(key)
                true.append(answer)
        false = list(dict.fromkeys(split_answers(row["Incorrect Answers"])))
        if not true:
            skipped["no_heldout_true"] += 1
            continue
        if not false:
            skipped["no_false"] += 1
            continue
        out.append({"index": k, "type": row["Type"], "reference": best, "true": true, "false": false})
    return out, {"questions_in_file": len(rows), **skipped}


def pairwise(true_scores: np.ndarray, false_scores: np.ndarray) -> tuple[float, float]:
    """(pairwise accuracy with ties as 1/2, share of tied pairs) of one question."""
    diff = true_scores[:, None] - false_scores[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0))), float(np.mean(diff == 0))


def r6(x: float) -> float:
    return round(float(x), 6)


def summarise(values: list[float]) -> dict:
    lo, hi = bootstrap_ci(values)
    return {"mean": r6(np.mean(values)), "ci95": [r6(lo), r6(hi)], "n_questions": len(values)}


def auc(scores: np.ndarray, right: np.ndarray) -> float:
    """P(score of a right item > score of a wrong one), ties 1/2 (Mann-Whitney); nan without both kinds."""
    pos, neg = scores[right], scores[~right]
    if not len(pos) or not len(neg):
        return float("nan")
    return pairwise(pos, neg)[0]


def auc_ci(scores: np.ndarray, right: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(scores), len(scores))
        value = auc(scores[idx], right[idx])
        if not np.isnan(value):
            reps.append(value)
    return [r6(x) for x in np.quantile(reps, [0.025, 0.975])]


def gsm8k_section(names: list[str], runs: list[Path]) -> dict:
    """Every metric on the GSM8K generations of existing runs against the gold worked solution (what
    `fslm eval --metrics` reports), and how well each one separates right final answers from wrong ones (AUC)."""
    from fslm.evaluate.metrics import generation_metrics
    from fslm.evaluate.store import read_rows
    from fslm.tasks import load_task

    items = {it.id: it for it in load_task("gsm8k")}
    out = {}
    for run in runs:
        folder = run if run.is_absolute() else ROOT / run
        rows = [r for r in read_rows(folder).values() if r["task"] == "gsm8k"]
        if not rows:
            log(f"{run}: no gsm8k rows, skipped")
            continue
        plan = {"gsm8k": [items[r["id"]] for r in rows]}
        t0 = time.perf_counter()
        values = generation_metrics(plan, rows, ["em", *names])["gsm8k"]
        right = np.array(values["em"], dtype=bool)
        entry = {"n": len(rows), "em": r6(right.mean()), "seconds": round(time.perf_counter() - t0, 1), "metrics": {}}
        for n in names:
            v = np.asarray(values[n], dtype=np.float64)
            entry["metrics"][n] = {
                **summarise(list(v)),
                "auc_right_vs_wrong": r6(auc(v, right)),
                "auc_ci95": auc_ci(v, right),
            }
        out[str(run)] = entry
        log(
            f"gsm8k {run}: em {entry['em']:.3f}, "
            + ", ".join(f"{n} {e['mean']:.3f} (AUC {e['auc_right_vs_wrong']:.3f})" for n, e in entry["metrics"].items())
        )
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["metrics"])
    groups = ["all", *result["by_type"]]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 4.0))
    for g, group in enumerate(groups):
        entries = [result["metrics"][n] if group == "all" else result["by_type"][group][n] for n in names]
        means = [100 * e["mean"] for e in entries]
        err = [
            [m - 100 * e["ci95"][0] for m, e in zip(means, entries)],
            [100 * e["ci95"][1] - m for m, e in zip(means, entries)],
        ]
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=f"{group} (n={entries[0]['n_questions']})")
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("pairwise accuracy % (true > false), 95% CI")
    ax.set_ylim(0, 100)
    ax.set_title("TruthfulQA: reference = best answer; held-out true vs false answers", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    names = list(result["metrics"])
    lines = [
        "# Text metrics on TruthfulQA: does the metric rank a true answer above a false one?",
        "",
        f"Reference: each question's best answer. {result['n_questions']} questions "
        f"({result['skipped']['no_heldout_true']} without a held-out true answer and {result['skipped']['no_false']} "
        f"without a false one left out of {result['skipped']['questions_in_file']}), {result['n_pairs']} (true, false) "
        "pairs. Pairwise accuracy: share of pairs where the true answer scores higher (ties = 1/2), averaged per "
        "question; 95% CI: bootstrap over questions. 50% = chance.",
        "",
        "| metric | pairwise acc % | 95% CI | tied pairs % | adversarial % | non-adversarial % |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for n in names:
        m = result["metrics"][n]
        by = [result["by_type"][t][n]["mean"] for t in ("Adversarial", "Non-Adversarial") if t in result["by_type"]]
        cells = " | ".join(f"{100 * v:.1f}" for v in by)
        lines.append(
            f"| {n} | {100 * m['mean']:.1f} | {100 * m['ci95'][0]:.1f}–{100 * m['ci95'][1]:.1f} | "
            f"{100 * m['tied_pairs']:.1f} | {cells} |"
        )
    lines += ["", "Paired differences (same questions, bootstrap 95% CI, points):", ""]
    lines += ["| A − B | diff | 95% CI | P(diff ≤ 0) |", "|---|---:|---|---:|"]
    for key, d in result["paired"].items():
        lines.append(
            f"| {key} | {100 * d['diff']:+.1f} | {100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f} | {d['p_le_0']:.3f} |"
        )
    if result.get("gsm8k"):
        lines += [
            "",
            "## GSM8K generations of existing runs, scored against the gold worked solution",
            "",
            "What `fslm eval --metrics` adds to a GSM8K run (reference: the gold solution, calculator annotations "
            "removed). AUC: how well the metric separates generations with the right final number from wrong ones "
            "(0.5 = not at all); 95% CIs by bootstrap over items.",
            "",
            "| run | n | em % | metric | mean % | 95% CI | AUC right vs wrong | AUC 95% CI |",
            "|---|---:|---:|---|---:|---|---:|---|",
        ]
        for run, e in result["gsm8k"].items():
            for n, m in e["metrics"].items():
                lines.append(
                    f"| {Path(run).name} | {e['n']} | {100 * e['em']:.1f} | {n} | {100 * m['mean']:.1f} | "
                    f"{100 * m['ci95'][0]:.1f}–{100 * m['ci95'][1]:.1f} | {m['auc_right_vs_wrong']:.3f} | "
                    f"{m['auc_ci95'][0]:.3f}–{m['auc_ci95'][1]:.3f} |"
                )
    lines += ["", "Metrics: " + "; ".join(f"`{n}` = {DESCRIPTIONS[n]}" for n in names) + "."]
    if result.get("encode"):
        e = result["encode"]
        lines.append(
            f"\nMiniLM encoding: {e['texts']} distinct texts in {e['seconds']} s ({e['texts_per_second']} texts/s, "
            f"{e['threads']} torch threads, {result['machine']['cpu']})."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metrics", default="em,rougeL,bleu,minilm,bertscore")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--limit", type=int, default=None, help="first N usable questions (a quick check)")
    ap.add_argument(
        "--gsm8k-runs",
        default=",".join(GSM8K_RUNS),
        help="run folders (items.jsonl with gsm8k generations) to score with every metric; '' to skip",
    )
    args = ap.parse_args()
    names = parse_metrics(args.metrics)
    check_available(names)
    path = get_settings().data_dir / CSV_FILE
    questions, skipped = load_questions(path)
    if args.limit:
        questions = questions[: args.limit]
    log(f"{len(questions)} questions from {path}")
    cands, refs, owner = [], [], []
    for qi, q in enumerate(questions):
        for label in ("true", "false"):
            for answer in q[label]:
                cands.append(answer)
                refs.append(q["reference"])
                owner.append((qi, label))
    t0 = time.perf_counter()
    text_names = [n for n in names if n not in ("minilm", "bertscore")]
    scores = score_pairs(text_names, cands, refs)
    log(f"string metrics: {time.perf_counter() - t0:.1f} s")
    encode = None
    enc_names = [n for n in names if n in ("minilm", "bertscore")]
    if enc_names:
        import torch

        t0 = time.perf_counter()
        scores.update(score_pairs(enc_names, cands, refs))
        seconds = time.perf_counter() - t0
        texts = len(set(cands) | set(refs))
        encode = {
            "texts": texts,
            "seconds": round(seconds, 1),
            "texts_per_second": round(texts / seconds, 1),
            "threads": torch.get_num_threads(),
        }
        log(f"MiniLM metrics: {seconds:.1f} s for {texts} texts")
    per_q: dict[str, list[float]] = {n: [] for n in names}
    ties: dict[str, list[float]] = {n: [] for n in names}
    pairs = 0
    arr = {n: np.asarray(scores[n], dtype=np.float64) for n in names}
    owner_arr = np.array([qi for qi, _ in owner])
    label_arr = np.array([lab == "true" for _, lab in owner])
    for qi in range(len(questions)):
        sel = owner_arr == qi
        t_mask, f_mask = sel & label_arr, sel & ~label_arr
        pairs += int(t_mask.sum() * f_mask.sum())
        for n in names:
            acc, tie = pairwise(arr[n][t_mask], arr[n][f_mask])
            per_q[n].append(acc)
            ties[n].append(tie)
    result: dict = {
        "data": str(CSV_FILE),
        "n_questions": len(questions),
        "n_pairs": pairs,
        "n_candidates": len(cands),
        "skipped": skipped,
        "metrics": {n: {**summarise(per_q[n]), "tied_pairs": r6(np.mean(ties[n]))} for n in names},
        "by_type": {},
        "paired": {},
        "encode": encode,
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    types = sorted({q["type"] for q in questions})
    for t in types:
        idx = [i for i, q in enumerate(questions) if q["type"] == t]
        result["by_type"][t] = {n: summarise([per_q[n][i] for i in idx]) for n in names}
    encoders = [n for n in ("minilm", "bertscore") if n in names]
    comparisons = [(a, b) for a in encoders for b in names if b not in encoders]
    if len(encoders) == 2:
        comparisons.append(("minilm", "bertscore"))
    for a, b in comparisons:
        d = paired_bootstrap({"all": per_q[a]}, {"all": per_q[b]})["all"]
        result["paired"][f"{a} − {b}"] = {
            "diff": r6(d["diff"]),
            "ci95": [r6(x) for x in d["ci95"]],
            "p_le_0": r6(d["p_le_0"]),
        }
    try:
        import torch

        result["machine"]["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    runs = [Path(r) for r in args.gsm8k_runs.split(",") if r.strip()]
    if runs:
        result["gsm8k"] = gsm8k_section([n for n in names if n != "em"], runs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "metrics.json", result)
    write_atomic(args.out / "metrics.md", markdown(result))
    plot(result, args.out / "metrics.png")
    for n in names:
        m = result["metrics"][n]
        log(f"{n}: pairwise acc {m['mean']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}], ties {m['tied_pairs']:.3f}")
    log(f"wrote {args.out}/metrics.{{json,md,png}}")


if __name__ == "__main__":
    main()
