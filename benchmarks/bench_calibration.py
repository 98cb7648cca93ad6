"""Are fslm's confidence signals calibrated, and does temperature scaling on held-out items fix them?

    FSLM_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_calibration.py [--results benchmarks/results/fslm_repro]

Signals covered (from per-item outputs already in benchmarks/results/, no model is run):

1. **Choice confidence** of every system that has both a held-out run and a test run in --results (`select/<name>`:
   `fslm eval --split heldout`, 50 items per task; `runs/<name>`: the first 300 test items per task): the softmax of
   the summed option log-likelihoods (`choice_scores`), confidence = the top option's probability, right = the
   row's own `correct`. The temperature is fitted on the held-out items (per task, and one per system over all its
   held-out items) and ECE is reported on the test items only.
2. **Router probability** P(small system is right) of the saved MiniLM router (benchmarks/results/collaborate/router,
   trained by bench_cascade.py on a hash-split half of the first 200 items of arc_easy/boolq/piqa), with the outcomes
   of the same small system (`model:smollm2-135m`, runs/base). The temperature is fitted on items 200..299 of those
   tasks (never seen by the router) and ECE is reported on the router's own report half (the other hash half of the
   first 200). The labels are checked against router.json / router.json's report accuracy first.

ECE: 10 equal-width bins (fslm.evaluate.calibration); 95% CIs by a paired bootstrap over test items (2,000 replicates).
Outputs: benchmarks/results/helpers/calibration.{json,md,png} (+ calibration_systems.png).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from fslm.evaluate.calibration import (  # noqa: E402
    DEFAULT_BINS,
    bootstrap_ece,
    ece,
    fit_binary_temperature,
    fit_temperature,
    nll,
    reliability,
    reliability_plot,
    scale_binary,
    top_confidence,
)
from fslm.evaluate.store import has_items, read_rows  # noqa: E402
from fslm.io import write_atomic, write_json  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "helpers"
ROUTER = ROOT / "benchmarks" / "results" / "collaborate" / "router"
ROUTER_REPORT = ROOT / "benchmarks" / "results" / "collaborate" / "router.json"
MAIN_SYSTEM = "base"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def r6(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def choice_rows(folder: Path) -> dict[str, list[dict]]:
    """Multiple-choice rows of a run folder by task, in file order."""
    by_task: dict[str, list[dict]] = {}
    for row in read_rows(folder).values():
        if row.get("choice_scores"):
            by_task.setdefault(row["task"], []).append(row)
    return by_task


def gold_of(row: dict) -> list[int]:
    return list(row["gold_set"]) if row.get("gold_set") else [int(row["gold"])]


def scores_gold(rows: list[dict]) -> tuple[list[list[float]], list[list[int]]]:
    return [[float(s) for s in r["choice_scores"]] for r in rows], [gold_of(r) for r in rows]


def evaluate_signal(conf0: np.ndarray, conf1: np.ndarray, right: np.ndarray, extra: dict) -> dict:
    boot = bootstrap_ece(right, conf0, conf1, n_bins=DEFAULT_BINS)
    return {
        **extra,
        "n_test": int(right.size),
        "acc": r6(right.mean()),
        "mean_conf_before": r6(conf0.mean()),
        "mean_conf_after": r6(conf1.mean()),
        "ece_before": r6(ece(conf0, right)),
        "ece_after": r6(ece(conf1, right)),
        "ece_before_ci95": [r6(x) for x in boot["before_ci95"]],
        "ece_after_ci95": [r6(x) for x in boot["after_ci95"]],
        "ece_diff_ci95": [r6(x) for x in boot["diff_ci95"]],
        "p_diff_ge_0": r6(boot["p_diff_ge_0"]),
        "reliability_before": [b.to_dict() for b in reliability(conf0, right)],
        "reliability_after": [b.to_dict() for b in reliability(conf1, right)],
    }


def calibrate_system(fit_dir: Path, test_dir: Path) -> dict:
    """Per task: T fitted on the held-out rows (per task, and pooled over the system's tasks), ECE on the test rows."""
    fit, test = choice_rows(fit_dir), choice_rows(test_dir)
    tasks = [t for t in test if t in fit]
    pooled_s, pooled_g = [], []
    for t in tasks:
        s, g = scores_gold(fit[t])
        pooled_s += s
        pooled_g += g
    t_pooled = fit_temperature(pooled_s, pooled_g)
    out: dict = {"fit": str(fit_dir.relative_to(ROOT)), "test": str(test_dir.relative_to(ROOT)), "tasks": {}}
    out["t_pooled"] = r6(t_pooled)
    mismatched = 0
    for t in tasks:
        fs, fg = scores_gold(fit[t])
        ts, tg = scores_gold(test[t])
        temp = fit_temperature(fs, fg)
        conf0, pred = top_confidence(ts, 1.0)
        conf1, pred1 = top_confidence(ts, temp)
        conf_pooled, _ = top_confidence(ts, t_pooled)
        assert np.array_equal(pred, pred1), "temperature scaling changed a prediction"
        right = np.array([p in set(g) for p, g in zip(pred, tg, strict=True)])
        mismatched += int(np.sum(right != np.array([bool(r["correct"]) for r in test[t]])))
        entry = evaluate_signal(
            conf0,
            conf1,
            right,
            {
                "temperature": r6(temp),
                "n_fit": len(fs),
                "nll_before": r6(nll(ts, tg, 1.0)),
                "nll_after": r6(nll(ts, tg, temp)),
            },
        )
        entry["ece_after_pooled_t"] = r6(ece(conf_pooled, right))
        entry["nll_after_pooled_t"] = r6(nll(ts, tg, t_pooled))
        out["tasks"][t] = entry
    out["rows_where_correct_differs_from_argmax"] = mismatched  # 0 expected: `correct` is the raw-score argmax
    for key in ("ece_before", "ece_after", "ece_after_pooled_t", "nll_before", "nll_after", "nll_after_pooled_t"):
        out[f"mean_{key}"] = r6(np.mean([e[key] for e in out["tasks"].values()]))
    out["tasks_ece_lower_ci_excludes_0"] = sum(e["ece_diff_ci95"][1] < 0 for e in out["tasks"].values())
    out["tasks_ece_higher_ci_excludes_0"] = sum(e["ece_diff_ci95"][0] > 0 for e in out["tasks"].values())
    return out


def hash_half(task: str, item_id: str) -> bool:
    """bench_cascade.py's split (fslm.collaborate.runs.split_pairs): True = the calibration (router-training) half."""
    return int(hashlib.sha1(f"{task}/{item_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < 0.5


def calibrate_router(results: Path) -> dict:
    """Router P(small right): T on items 200..299 (unseen by the router), ECE on its report half of the first 200."""
    from fslm.collaborate.route import Router, embed
    from fslm.evaluate import select_items

    router = Router.load(ROUTER)
    tasks = list(router.meta["tasks"])
    rows = read_rows(results / "runs" / MAIN_SYSTEM)
    train, report, fit = [], [], []
    for task in tasks:
        first = [it.id for it in select_items(task, 300)]
        for k, item_id in enumerate(first):
            row = rows[item_id]
            if k >= 200:
                fit.append(row)
            elif hash_half(task, item_id):
                train.append(row)
            else:
                report.append(row)
    acc = {name: float(np.mean([r["correct"] for r in part])) for name, part in (("train", train), ("report", report))}
    expected = json.loads(ROUTER_REPORT.read_text(encoding="utf-8"))
    check = {
        "router_train_n": router.meta.get("n_train"),
        "our_train_n": len(train),
        "router_train_small_acc": router.meta.get("train_small_acc"),
        "our_train_small_acc": r6(acc["train"]),
        "router_report_n": expected.get("n"),
        "our_report_n": len(report),
        "router_report_small_acc": expected.get("small_acc"),
        "our_report_small_acc": r6(acc["report"]),
    }
    same = (
        check["router_train_n"] == check["our_train_n"]
        and check["router_report_n"] == check["our_report_n"]
        and abs(check["router_train_small_acc"] - acc["train"]) < 1e-4
        and abs(check["router_report_small_acc"] - acc["report"]) < 1e-4
    )
    check["labels_match_the_router_run"] = same
    log(f"router label check: {check}")
    emb_fit = embed([str(r.get("prompt", "")) for r in fit])
    emb_rep = embed([str(r.get("prompt", "")) for r in report])
    p_fit, p_rep = router.predict(emb_fit.vectors), router.predict(emb_rep.vectors)
    y_fit = np.array([bool(r["correct"]) for r in fit])
    y_rep = np.array([bool(r["correct"]) for r in report])
    temp = fit_binary_temperature(p_fit, y_fit)
    p_after = scale_binary(p_rep, temp)
    entry = evaluate_signal(
        np.asarray(p_rep, dtype=np.float64),
        p_after,
        y_rep,
        {"temperature": r6(temp), "n_fit": len(fit), "tasks": tasks, "label_check": check},
    )
    entry["signal"] = "router P(small system right); ECE of that probability against the outcome"
    entry["ece_fit_items_before"] = r6(ece(p_fit, y_fit))
    return entry


def markdown(result: dict) -> str:
    main = result["systems"][MAIN_SYSTEM]
    lines = [
        "# Calibration of fslm's confidence signals (ECE, temperature scaling on held-out items)",
        "",
        f"ECE: {DEFAULT_BINS} equal-width bins; 95% CIs: paired bootstrap over the test items. Temperature T fitted "
        "by minimising NLL on held-out items only; ECE/NLL reported on other (test) items. T > 1 = the raw signal "
        "was overconfident.",
        "",
        f"## Choice confidence of `{MAIN_SYSTEM}` ({result['system_names'][MAIN_SYSTEM]}), per task",
        "",
        f"Fit: `{main['fit']}` (held-out split); test: `{main['test']}`.",
        "",
        "| task | n fit / test | acc % | mean conf % | T | ECE before | 95% CI | ECE after | 95% CI | Δ 95% CI | NLL before → after |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---|---|",
    ]
    for task, e in main["tasks"].items():
        lines.append(
            f"| {task} | {e['n_fit']} / {e['n_test']} | {100 * e['acc']:.1f} | {100 * e['mean_conf_before']:.1f} | "
            f"{e['temperature']:.2f} | {e['ece_before']:.3f} | {e['ece_before_ci95'][0]:.3f}–{e['ece_before_ci95'][1]:.3f} | "
            f"{e['ece_after']:.3f} | {e['ece_after_ci95'][0]:.3f}–{e['ece_after_ci95'][1]:.3f} | "
            f"{e['ece_diff_ci95'][0]:+.3f} to {e['ece_diff_ci95'][1]:+.3f} | {e['nll_before']:.3f} → {e['nll_after']:.3f} |"
        )
    lines += [
        "",
        "## Every system with a held-out run (mean over its tasks)",
        "",
        "| system | pooled T | mean ECE before | after (per-task T) | after (pooled T) | mean NLL before → per-task T → pooled T | tasks with ECE lower / higher (CI excludes 0) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, s in result["systems"].items():
        n = len(s["tasks"])
        lines.append(
            f"| {name} | {s['t_pooled']:.2f} | {s['mean_ece_before']:.3f} | {s['mean_ece_after']:.3f} | "
            f"{s['mean_ece_after_pooled_t']:.3f} | {s['mean_nll_before']:.3f} → {s['mean_nll_after']:.3f} → "
            f"{s['mean_nll_after_pooled_t']:.3f} | {s['tasks_ece_lower_ci_excludes_0']} / "
            f"{s['tasks_ece_higher_ci_excludes_0']} of {n} |"
        )
    router = result.get("router")
    if router:
        c = router["label_check"]
        lines += [
            "",
            "## Router probability P(small system right)",
            "",
            f"Router: `benchmarks/results/collaborate/router` ({', '.join(router['tasks'])}). T fitted on "
            f"{router['n_fit']} items the router never saw (items 200..299 per task); reported on its "
            f"{router['n_test']} report-half items. Labels reproduce the router run: {c['labels_match_the_router_run']} "
            f"(train acc {c['our_train_small_acc']} vs {c['router_train_small_acc']}, report acc "
            f"{c['our_report_small_acc']} vs {c['router_report_small_acc']}).",
            "",
            "| n fit / test | small acc % | mean P % | T | ECE before | 95% CI | ECE after | 95% CI | Δ 95% CI |",
            "|---|---:|---:|---:|---:|---|---:|---|---|",
            f"| {router['n_fit']} / {router['n_test']} | {100 * router['acc']:.1f} | "
            f"{100 * router['mean_conf_before']:.1f} | {router['temperature']:.2f} | {router['ece_before']:.3f} | "
            f"{router['ece_before_ci95'][0]:.3f}–{router['ece_before_ci95'][1]:.3f} | {router['ece_after']:.3f} | "
            f"{router['ece_after_ci95'][0]:.3f}–{router['ece_after_ci95'][1]:.3f} | "
            f"{router['ece_diff_ci95'][0]:+.3f} to {router['ece_diff_ci95'][1]:+.3f} |",
        ]
    lines += ["", "## Not covered", ""] + [f"- {x}" for x in result["not_covered"]]
    return "\n".join(lines) + "\n"


def bins_of(entries: list[dict]):
    from fslm.evaluate.calibration import Bin

    return [Bin(**b) for b in entries]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "fslm_repro")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-router", action="store_true")
    args = ap.parse_args()
    results = args.results.resolve()
    names = sorted(
        p.name for p in (results / "select").iterdir() if has_items(p) and has_items(results / "runs" / p.name)
    )
    if MAIN_SYSTEM in names:
        names.remove(MAIN_SYSTEM)
        names.insert(0, MAIN_SYSTEM)
    result: dict = {
        "results": str(results.relative_to(ROOT)),
        "n_bins": DEFAULT_BINS,
        "systems": {},
        "system_names": {},
    }
    for name in names:
        fit_dir, test_dir = results / "select" / name, results / "runs" / name
        ident_fit = json.loads((fit_dir / "run.json").read_text())["identity"]
        ident_test = json.loads((test_dir / "run.json").read_text())["identity"]
        if ident_fit.get("split") != "heldout" or ident_fit["system"] != ident_test["system"]:
            log(f"skip {name}: held-out/test identities differ ({ident_fit} vs {ident_test})")
            continue
        result["system_names"][name] = ident_test["system"]
        result["systems"][name] = calibrate_system(fit_dir, test_dir)
        s = result["systems"][name]
        log(f"{name}: mean ECE {s['mean_ece_before']:.3f} -> {s['mean_ece_after']:.3f} (pooled T {s['t_pooled']:.2f})")
    if not args.no_router and ROUTER.is_dir():
        result["router"] = calibrate_router(results)
        r = result["router"]
        log(f"router: ECE {r['ece_before']:.3f} -> {r['ece_after']:.3f} (T {r['temperature']:.2f})")
    result["not_covered"] = [
        "verifier P(yes) (`fslm cascade signals`): no per-item signals file is kept in benchmarks/results/ "
        "(bench_cascade.py wrote it under a cache folder that is gone); producing one means running the small "
        "model's self-verification on every item, not done here",
        "systems without a held-out run (model-qwen2.5-coder-0.5b, model-gemma3-270m and the stack variants that "
        "have only test runs in runs/): a temperature fitted on their test items would be reported on the items it "
        "was fitted on",
        "gsm8k (a generation task: no option scores); the router of the 1.5B cascade (router_1.5b): its large-model "
        "outcomes are not needed for P(small right), but it was trained on the same items as the 0.5B one, so it "
        "adds no new evidence",
    ]
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "calibration.json", result)
    write_atomic(args.out / "calibration.md", markdown(result))
    main_sys = result["systems"][MAIN_SYSTEM]
    panels = {
        f"{t} (T={e['temperature']:.2f})": {
            "before": bins_of(e["reliability_before"]),
            "after": bins_of(e["reliability_after"]),
        }
        for t, e in main_sys["tasks"].items()
    }
    if result.get("router"):
        r = result["router"]
        panels[f"router P(right) (T={r['temperature']:.2f})"] = {
            "before": bins_of(r["reliability_before"]),
            "after": bins_of(r["reliability_after"]),
        }
    write_atomic(
        args.out / "calibration.png",
        reliability_plot(
            panels, title=f"{result['system_names'][MAIN_SYSTEM]}: test items, T fitted on held-out items"
        ),
    )
    write_atomic(args.out / "calibration_systems.png", systems_plot(result))
    log(f"wrote {args.out}/calibration.{{json,md,png}}")


def systems_plot(result: dict) -> bytes:
    """Mean ECE over tasks before/after, per system (bars)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["systems"])
    before = [result["systems"][n]["mean_ece_before"] for n in names]
    after = [result["systems"][n]["mean_ece_after"] for n in names]
    pooled = [result["systems"][n]["mean_ece_after_pooled_t"] for n in names]
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 4.0))
    ax.bar(xs - 0.27, before, 0.27, label="before (T=1)")
    ax.bar(xs, after, 0.27, label="after (per-task T)")
    ax.bar(xs + 0.27, pooled, 0.27, label="after (one T per system)")
    ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"mean ECE over tasks ({DEFAULT_BINS} bins), test items")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
