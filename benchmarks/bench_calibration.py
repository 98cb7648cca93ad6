"""Are fslm's confidence signals calibrated, and does temperature scaling on held-out items fix them?

    FSLM_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_calibration.py [--results benchmarks/results/fslm_repro]

Signals covered (from per-item outputs in benchmarks/results/; only the verifier's signals are computed, when missing):

1. **Choice confidence** of every system that has both a held-out run and a test run in --results (`select/<name>`:
   `fslm eval --split heldout`, 50 items per task; `runs/<name>`: the first 300 test items per task): the softmax of
   the summed option log-likelihoods (`choice_scores`), confidence = the top option's probability, right = the
   row's own `correct`. The temperature is fitted on the held-out items (per task, and one per system over all its
   held-out items) and ECE is reported on the test items only.
2. **Choice margin** (top-1 minus top-2 probability: the cascade's and `score` stages' confidence) of `base`, the same
   runs, as a probability of being right: temperature and Platt scaling, AUROC (`fslm eval calibrate`).
3. **Router probability** P(small system is right) of the saved MiniLM router (benchmarks/results/collaborate/router,
   trained by bench_cascade.py on a hash-split half of the first 200 items of arc_easy/boolq/piqa), with the outcomes
   of the same small system (`model:smollm2-135m`, runs/base). The temperature is fitted on items 200..299 of those
   tasks (never seen by the router) and ECE is reported on the router's own report half (the other hash half of the
   first 200). The labels are checked against router.json / router.json's report accuracy first.
4. **Verifier P(yes)** of SmolLM2-135M checking its own answers, and of Qwen2.5-Coder-1.5B-Instruct (bf16) checking
   them (`fslm cascade signals` on `select/base` and `runs/base`; kept under benchmarks/results/helpers/verify*/ and
   computed when missing: ~6 min with SmolLM2, ~20 min with the 1.5B in bf16 on an AMX CPU; a verifier whose signals are
   missing and whose model is not installed is skipped and listed as not covered): as the margin.

ECE: 10 equal-width bins (fslm.evaluate.calibration); 95% CIs by a paired bootstrap over test items (2,000 replicates).
Outputs: benchmarks/results/helpers/calibration.{json,md,png} (+ calibration_systems.png, calibration_margin.png,
calibration_verify*.png) and the verifiers' signals files under benchmarks/results/helpers/verify*/.
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

from fslm.errors import FslmError  # noqa: E402
from fslm.evaluate.calibrate import calibrate_runs, calibration_markdown, reliability_panels  # noqa: E402
from fslm.evaluate.calibration import (  # noqa: E402
    DEFAULT_BINS,
    bootstrap_ece,
    ece,
    fit_binary_temperature,
    reliability,
    reliability_plot,
    scale_binary,
)
from fslm.evaluate.store import has_items, read_rows  # noqa: E402
from fslm.io import write_atomic, write_json  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "helpers"
ROUTER = ROOT / "benchmarks" / "results" / "collaborate" / "router"
ROUTER_REPORT = ROOT / "benchmarks" / "results" / "collaborate" / "router.json"
MAIN_SYSTEM = "base"
# result key -> (verifier model, dtype, signals folder under --out, what it is); each verifies MAIN_SYSTEM's answers
VERIFIERS = {
    "verifier": ("smollm2-135m", "float32", "verify", "SmolLM2-135M checking its own answers"),
    "verifier_1.5b": (
        "qwen2.5-coder-1.5b",
        "bfloat16",
        "verify-qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct (bf16, 11x the parameters) checking SmolLM2-135M's answers",
    ),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel(path: Path) -> Path:
    """A path as the report shows it: from the repository root when it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def r6(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


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
    report = calibrate_runs(rel(fit_dir), rel(test_dir))
    mismatched = sum(e["rows_where_correct_differs_from_argmax"] for e in report["tasks"].values())
    assert mismatched == 0, f"{test_dir}: {mismatched} rows whose `correct` is not the argmax of their scores"
    return report


def ensure_verify_signals(results: Path, folder: Path, model: str, dtype: str) -> dict[str, Path]:
    """{"heldout"|"test": signals file} of a verifier on `select/base` and `runs/base`: kept, or computed now."""
    from fslm.collaborate.live import run_items, verify_signal_rows
    from fslm.collaborate.runs import read_run
    from fslm.engine import load_engine
    from fslm.io import write_jsonl

    paths = {}
    engine = None
    for part, sub in (("heldout", "select"), ("test", "runs")):
        paths[part] = folder / f"{part}.jsonl"
        if paths[part].is_file():
            continue
        run = read_run(results / sub / MAIN_SYSTEM)
        items = run_items(run)  # the split the run names
        engine = engine or load_engine(model, dtype=dtype)
        log(f"verifier: {len(run.rows)} answers of {results / sub / MAIN_SYSTEM} with {model} ({dtype})…")
        folder.mkdir(parents=True, exist_ok=True)
        write_jsonl(paths[part], verify_signal_rows(engine, items, run.rows))
    return paths


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
    # per task: its own T from its 100 fit items, ECE on its report-half items
    entry["per_task"] = {}
    fit_task = np.array([r["task"] for r in fit])
    rep_task = np.array([r["task"] for r in report])
    for task in tasks:
        f, t = fit_task == task, rep_task == task
        temp_t = fit_binary_temperature(p_fit[f], y_fit[f])
        p_t = np.asarray(p_rep[t], dtype=np.float64)
        entry["per_task"][task] = evaluate_signal(
            p_t, scale_binary(p_t, temp_t), y_rep[t], {"temperature": r6(temp_t), "n_fit": int(f.sum())}
        )
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
            f"{s['mean_nll_after_pooled_t']:.3f} | {s['tasks_ece_lower']} / "
            f"{s['tasks_ece_higher']} of {n} |"
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
            "",
            "Per task (T fitted on that task's 100 fit items):",
            "",
            "| task | n fit / test | small acc % | mean P % | T | ECE before | 95% CI | ECE after | 95% CI | Δ 95% CI |",
            "|---|---|---:|---:|---:|---:|---|---:|---|---|",
        ]
        for task, e in router["per_task"].items():
            lines.append(
                f"| {task} | {e['n_fit']} / {e['n_test']} | {100 * e['acc']:.1f} | {100 * e['mean_conf_before']:.1f} | "
                f"{e['temperature']:.2f} | {e['ece_before']:.3f} | {e['ece_before_ci95'][0]:.3f}–"
                f"{e['ece_before_ci95'][1]:.3f} | {e['ece_after']:.3f} | {e['ece_after_ci95'][0]:.3f}–"
                f"{e['ece_after_ci95'][1]:.3f} | {e['ece_diff_ci95'][0]:+.3f} to {e['ece_diff_ci95'][1]:+.3f} |"
            )
    if result.get("margin"):
        lines += [
            "",
            f"## Choice margin (top-1 minus top-2 option probability) of `{MAIN_SYSTEM}`, per task",
            "",
            "The cascade's and `score` stages' confidence (`fslm eval calibrate --signal margin`), read as a "
            "probability of being right. Same runs as the choice confidence above.",
            "",
            calibration_markdown(result["margin"]).split("\n", 2)[2].rstrip("\n"),  # without its title
        ]
    for key, (model, dtype, _, what) in VERIFIERS.items():
        if result.get(key):
            lines += [
                "",
                f"## Verifier P(yes): {what}, per task",
                "",
                f"Signals written by `fslm cascade signals --model {model}` ({dtype}; `fslm eval calibrate --signal "
                f"verify`): `{result[key]['fit_signals']}` (fit), `{result[key]['signals']}` (report).",
                "",
                calibration_markdown(result[key]).split("\n", 2)[2].rstrip("\n"),
            ]
    if result.get("margin") or any(result.get(key) for key in VERIFIERS):
        lines += [
            "",
            "AUROC: does the signal rank right answers above wrong ones (0.5: not at all; no rescaling changes it). "
            '"Fit rate": the fit items\' accuracy as a constant, the calibrated predictor that knows nothing about the '
            "item: a signal is useful only where it beats it.",
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
    ap.add_argument("--no-verifier", action="store_true", help="skip the verifier P(yes) section")
    args = ap.parse_args()
    results = args.results.resolve()
    names = sorted(
        p.name for p in (results / "select").iterdir() if has_items(p) and has_items(results / "runs" / p.name)
    )
    if MAIN_SYSTEM in names:
        names.remove(MAIN_SYSTEM)
        names.insert(0, MAIN_SYSTEM)
    result: dict = {
        "results": str(rel(results)),
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
    fit_main, test_main = rel(results / "select" / MAIN_SYSTEM), rel(results / "runs" / MAIN_SYSTEM)
    result["margin"] = calibrate_runs(fit_main, test_main, signal="margin")
    m = result["margin"]
    log(f"margin: AUROC {m['mean_auroc']:.3f}, ECE {m['mean_ece_before']:.3f} -> {m['mean_ece_after']:.3f} (T)")
    skipped = []
    for key, (model, dtype, sub, _) in VERIFIERS.items() if not args.no_verifier else ():
        try:
            paths = ensure_verify_signals(results, args.out / sub, model, dtype)
        except FslmError as err:  # e.g. the 1.5B's packages are not installed and its signals are not kept
            log(f"{key}: skipped ({err})")
            skipped.append(f"{key} ({model}): its signals are not kept and it could not run here ({err})")
            continue
        result[key] = calibrate_runs(
            fit_main,
            test_main,
            signal="verify",
            fit_signals=rel(paths["heldout"].resolve()),
            signals=rel(paths["test"].resolve()),
        )
        v = result[key]
        log(f"{key}: AUROC {v['mean_auroc']:.3f}, ECE {v['mean_ece_before']:.3f} -> {v['mean_ece_after']:.3f} (T)")
    result["not_covered"] = skipped + [
        "verifier P(yes) of the other systems (only SmolLM2-135M's answers, `base`, are verified: one signal "
        "file pair per system and verifier, ~6 min each with SmolLM2)",
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
        panels[f"router P(right), 3 tasks (T={r['temperature']:.2f})"] = {
            "before": bins_of(r["reliability_before"]),
            "after": bins_of(r["reliability_after"]),
        }
        for task, e in r["per_task"].items():
            panels[f"router P(right), {task} (T={e['temperature']:.2f})"] = {
                "before": bins_of(e["reliability_before"]),
                "after": bins_of(e["reliability_after"]),
            }
    write_atomic(
        args.out / "calibration.png",
        reliability_plot(
            panels, title=f"{result['system_names'][MAIN_SYSTEM]}: test items, T fitted on held-out items"
        ),
    )
    write_atomic(args.out / "calibration_systems.png", systems_plot(result))
    titles = {
        "margin": f"{result['system_names'][MAIN_SYSTEM]}: choice margin on test items",
        **{key: f"{v[3]}: P(yes) on test items" for key, v in VERIFIERS.items()},
    }
    for key, title in titles.items():
        if result.get(key):
            write_atomic(
                args.out / f"calibration_{key.replace('verifier', 'verify')}.png",
                reliability_plot(reliability_panels(result[key]), title=f"{title}, T / Platt fitted on held-out items"),
            )
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
