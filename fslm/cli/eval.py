"""`fslm eval` (benchmark a model or stack), `fslm eval compare` (paired bootstrap of two runs) and `fslm eval
compress` (gzip finished runs' per-item rows)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fslm.cli.common import (
    check_dtype,
    check_engine,
    check_expert_delta,
    check_model,
    check_output,
    check_ray,
    check_stack,
    console,
    default_of,
    engine_option,
    guarded,
    out,
    print_json,
    ray_options,
    status,
)
from fslm.errors import InputError
from fslm.evaluate.calibrate import CHOICE, FROM_ROWS
from fslm.evaluate.compare import compare
from fslm.evaluate.run import evaluate  # for their defaults; none imports torch
from fslm.evaluate.systems import load_system

RAY, RAY_ACTORS = ray_options()
app = typer.Typer(
    help="Evaluate a model or stack on the benchmark tasks; `fslm eval compare A B` compares two runs.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _progress(event: dict) -> None:
    if event.get("new"):
        console.print(
            f"  {event['task']}: {event['done']}/{event['total']}  acc {100 * event['acc']:.1f}%  "
            f"({event['elapsed']:.0f} s)",
            style="dim",
            highlight=False,
        )


def _print_summary(data: dict) -> None:
    table = Table(title=data["system"], title_justify="left")
    for col in ("task", "n", "acc %", "95% CI", "acc_norm %", "gen tok/item", "s/item"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, t in data["tasks"].items():
        lo, hi = t["ci95"]
        norm = "—" if t["acc_norm"] is None else f"{100 * t['acc_norm']:.1f}"
        table.add_row(
            task,
            str(t["n"]),
            f"{100 * t['acc']:.1f}",
            f"{100 * lo:.1f}–{100 * hi:.1f}",
            norm,
            f"{t['tokens_out_per_item']}",
            f"{t['seconds_per_item']}",
        )
    mlo, mhi = data["macro_ci95"]
    cost = data["cost"]
    table.add_row(
        "macro",
        str(data["n_items"]),
        f"{100 * data['macro_acc']:.1f}",
        f"{100 * mlo:.1f}–{100 * mhi:.1f}",
        "",
        f"{cost['generated_tokens_per_item']}",
        f"{cost['seconds_per_item']}",
        style="bold",
    )
    out.print(table)
    for task, t in data["tasks"].items():
        for name, m in (t.get("metrics") or {}).items():
            lo, hi = m["ci95"]
            out.print(f"{task} {name}: {100 * m['mean']:.1f}% (95% CI {100 * lo:.1f}–{100 * hi:.1f})", highlight=False)
    out.print(
        f"params touched {data['params_touched']:,} · wall {cost['wall_seconds']} s · peak RSS {cost['peak_rss_mb']} MB",
        highlight=False,
    )


def check_system(
    model: str | None,
    stack: str | None,
    *,
    adapters: bool,
    base: bool,
    engine: str | None = None,
    expert_delta: str | None = None,
    delta_alpha: float = 1.0,
) -> None:
    """The model reference, or the stack file and its base model, and the engine, as far as they can be checked
    without a load; which options fit which system is `load_system`'s to say (it does so before loading)."""
    if model is not None and stack is not None:
        raise InputError("give --model or --stack, not both")
    if expert_delta is None and delta_alpha != default_of(load_system, "delta_alpha"):
        raise InputError("--delta-alpha applies to proxy-tuning: add --expert-delta TUNED:BASE")
    if expert_delta is not None:
        if model is None:
            raise InputError("--expert-delta applies to --model (proxy-tuning of one model), not to --stack")
        if engine not in (None, "hf"):
            raise InputError(f"--engine {engine}: --expert-delta runs on transformers' logits (--engine hf)")
        check_expert_delta(expert_delta, delta_alpha)
    if model is not None:
        check_model(model, "--model")
        check_engine(engine)
    elif stack is not None:
        cfg = check_stack(None if stack == "default" else stack, adapters=adapters and not base, engine=engine)
        check_engine(engine or cfg.engine)


@app.callback()
@guarded
def eval_command(
    ctx: typer.Context,
    stack: str | None = typer.Option(None, "--stack", "-s", help="Stack YAML to evaluate, or 'default'."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model reference to evaluate alone (raw lm-eval prompts)."
    ),
    tasks: str | None = typer.Option(None, "--tasks", "-t", help="Comma-separated task names (default: all)."),
    limit: int | None = typer.Option(
        None, "--limit", "-n", help="First N items per task (MMLU: subjects interleaved)."
    ),
    num_fewshot: int = typer.Option(
        default_of(evaluate, "num_fewshot"),
        "--num-fewshot",
        "-k",
        min=0,
        help="Few-shot examples from the task's train/dev split.",
    ),
    split: str | None = typer.Option(None, "--split", help="Evaluate another split (e.g. validation, train, dev)."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder: items.jsonl, summary.json, table.md, chart.png; reruns resume."
    ),
    no_adapters: bool = typer.Option(
        False, "--no-adapters", help="With --stack: the same stack with every LoRA adapter off."
    ),
    base: bool = typer.Option(False, "--base", help="With --stack: its base model alone (raw prompts, no stages)."),
    batch_size: int = typer.Option(
        default_of(evaluate, "batch_size"), "--batch-size", help="Items per batch (and per resumable write)."
    ),
    stage_cache: Path | None = typer.Option(
        None,
        "--stage-cache",
        help="With --stack: reuse (and add to) greedy stage outputs in this SQLite file; stacks sharing a stage generate it once.",
    ),
    answer_format: str = typer.Option(
        default_of(load_system, "answer_format"),
        "--answer-format",
        help="With --stack: 'stack' (the answer stage scores options in its chat format) or 'raw' (the base model scores lm-eval's raw context with the earlier texts in front) or 'raw-adapter' (the same raw contexts scored with the final stage's adapter: one trained on raw contexts).",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print summary.json to stdout instead of a table."),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Weights' dtype: float32 or bfloat16 (default: the stack's `dtype:`, or float32). bfloat16 scored 1.7x "
        "faster than float32 on a CPU with AMX; AVX2-only CPUs emulate it (docs/engine.md).",
    ),
    engine: str | None = engine_option(
        help="Inference engine (default: the stack's `engine:`, or hf): hf, llamacpp, vllm or auto."
    ),
    expert_delta: str | None = typer.Option(
        None,
        "--expert-delta",
        metavar="TUNED:BASE",
        help="With --model: evaluate it proxy-tuned, options scored under log p + alpha x (log p TUNED - log p BASE) "
        "renormalised; each MODEL[+ADAPTER_DIR], same tokenizer as --model (hf engine).",
    ),
    delta_alpha: float = typer.Option(
        default_of(load_system, "delta_alpha"),
        "--delta-alpha",
        help="Weight of the --expert-delta shift (0 = --model).",
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="Also score generation tasks (gsm8k) against their reference text: comma list of em, rougeL, bleu, "
        "minilm (all-MiniLM-L6-v2 cosine), bertscore (BERTScore-style F1 on MiniLM); mean and 95% CI in summary.json.",
    ),
    ray: str | None = RAY,
    ray_actors: int | None = RAY_ACTORS,
) -> None:
    """Evaluate --model M or --stack S on benchmark tasks (acc, acc_norm, 95% CIs, costs)."""
    if ctx.invoked_subcommand is not None:
        return
    if stack is None and model is None:
        raise InputError(
            "give --model M (e.g. smollm2-135m) or --stack S (a stack YAML or 'default'); see fslm eval --help"
        )
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    from fslm.evaluate import evaluate, load_system, parse_tasks, select_items
    from fslm.evaluate.metrics import check_available, parse_metrics

    names = parse_tasks(tasks)
    metric_names = parse_metrics(metrics)
    check_available(metric_names)  # unknown names, missing packages or weights fail before the model load
    for name in names:  # bad task names, data dirs and records fail before the slow model load
        select_items(name, limit, split)
    check_system(
        model,
        stack,
        adapters=not no_adapters,
        base=base,
        engine=engine,
        expert_delta=expert_delta,
        delta_alpha=delta_alpha,
    )
    for path, what, folder in ((out_dir, "--out", True), (stage_cache, "--stage-cache", False)):
        if path is not None:
            check_output(path, what, folder=folder)
    check_ray(ray, ray_actors)
    if dtype is not None:
        check_dtype(dtype)
    with status("loading model…"):
        system = load_system(
            model=model,
            stack=stack,
            adapters=not no_adapters,
            base=base,
            stage_cache=stage_cache,
            answer_format=answer_format,
            backend=engine,
            expert_delta=expert_delta,
            delta_alpha=delta_alpha,
            dtype=dtype,
        )
    console.print(f"evaluating {system.name} on {', '.join(names)}" + (f" → {out_dir}" if out_dir else ""), style="dim")
    summary = evaluate(
        system,
        names,
        limit,
        num_fewshot,
        out_dir,
        split=split,
        batch_size=batch_size,
        progress=None if json_output else _progress,
        metrics=metric_names or None,
        ray=ray,
        ray_actors=ray_actors,
    )
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if json_output:
        print_json(summary.to_dict())
    else:
        _print_summary(summary.to_dict())


@app.command("compare")
@guarded
def compare_command(
    run_a: Path = typer.Argument(..., help="Run folder A (written by fslm eval --out)."),
    run_b: Path = typer.Argument(..., help="Run folder B."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Also write compare.json and compare.md here."),
    n_boot: int = typer.Option(default_of(compare, "n_boot"), "--n-boot", help="Bootstrap resamples."),
    json_output: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Paired bootstrap 95% CI of acc(A) - acc(B) per task and macro, on the items both runs share."""
    from fslm.evaluate import compare
    from fslm.evaluate.compare import compare_markdown

    if n_boot < 100:
        raise InputError(f"--n-boot must be at least 100, got {n_boot}")
    result = compare(run_a, run_b, n_boot=n_boot, out_dir=out_dir)
    if json_output:
        print_json(result)
    else:
        out.print(compare_markdown(result), highlight=False, markup=False)


@app.command("calibrate")
@guarded
def calibrate_command(
    fit: Path = typer.Option(..., "--fit", help="Run folder of held-out items the rescaling is fitted on."),
    run: Path = typer.Option(..., "--run", help="Run folder of the same system on other items, where it is measured."),
    signal: str = typer.Option(
        CHOICE, "--signal", help="'choice' or 'margin' (from the runs' option scores), or a signal in --signals files."
    ),
    fit_signals: Path | None = typer.Option(None, "--fit-signals", help="Signals file of the --fit run."),
    signals: Path | None = typer.Option(None, "--signals", help="Signals file of the --run run."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Also write calibration.json, .md and .png here."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """ECE, reliability diagram and temperature (and Platt) scaling of a confidence signal, per task: fitted on one
    run's items, measured on another's."""
    from fslm.evaluate.calibrate import calibrate_runs, calibration_markdown, write_calibration

    if (signal in FROM_ROWS) != (fit_signals is None and signals is None) or (fit_signals is None) != (signals is None):
        raise InputError(
            "--signal choice or margin reads the runs' option scores: no signals files; any other signal needs both "
            "--fit-signals and --signals (from `fslm cascade signals`)"
        )
    if out_dir is not None:
        check_output(out_dir, "--out", folder=True)
    report = calibrate_runs(fit, run, signal=signal, fit_signals=fit_signals, signals=signals)
    if out_dir is not None:
        write_calibration(report, out_dir)
    if json_output:
        print_json({k: v for k, v in report.items() if k != "tasks"} | {"tasks": _without_bins(report["tasks"])})
    else:
        out.print(calibration_markdown(report), highlight=False, markup=False)


def _without_bins(tasks: dict) -> dict:
    return {t: {k: v for k, v in e.items() if not k.startswith("reliability")} for t, e in tasks.items()}


@app.command("compress")
@guarded
def compress_command(
    runs: list[Path] = typer.Argument(..., help="Finished run folders (written by fslm eval --out)."),
) -> None:
    """Move each run's items.jsonl into items.jsonl.gz (every fslm reader reads it; a resumed run appends beside it)."""
    from fslm.evaluate import compress_run

    for run in runs:
        before = sum(f.stat().st_size for f in (run / "items.jsonl", run / "items.jsonl.gz") if f.is_file())
        packed = compress_run(run)
        out.print(f"{packed}: {before:,} -> {packed.stat().st_size:,} bytes", highlight=False, markup=False)
