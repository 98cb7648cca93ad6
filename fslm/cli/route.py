"""`fslm route`: a prompt-only router (sentence embeddings + logistic regression) deciding small vs large."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fslm.cli.common import check_output, default_of, guarded, out, print_json, status
from fslm.collaborate.route import train_runs  # for its defaults (no torch)

app = typer.Typer(
    no_args_is_help=True, help="Learned router: predict from the prompt whether the small system will be right."
)


@app.command("train")
@guarded
def train_command(
    small: Path = typer.Option(..., "--small", help="Small system's `fslm eval` run on train/dev items."),
    large: Path = typer.Option(..., "--large", help="Large system's run on the same items."),
    out_dir: Path = typer.Option(..., "--out", help="Router folder to write (router.safetensors + router.json)."),
    target: float = typer.Option(
        default_of(train_runs, "target"),
        "--target",
        help="Threshold keeps this fraction of the large system's accuracy.",
    ),
    c: float = typer.Option(
        default_of(train_runs, "c"), "--c", help="Inverse L2 regularization strength of the logistic regression."
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Fit the router on per-item outcomes and choose its threshold on out-of-fold predictions."""
    from fslm.collaborate.route import train_runs
    from fslm.errors import InputError

    if c <= 0:  # before the prompts are embedded
        raise InputError(f"--c must be > 0, got {c}")
    check_output(out_dir, "--out", folder=True)
    with status("embedding prompts and fitting…", enabled=not json_output):
        router = train_runs(small, large, out_dir, target=target, c=c)
    if json_output:
        print_json({"threshold": router.threshold, **router.meta})
        return
    oof = router.meta["train_oof"]
    out.print(f"router saved to {out_dir}: send to large when P(small right) < {router.threshold:.4f}")
    out.print(
        f"on {router.meta['n_train']} training items (out-of-fold): accuracy {oof['acc']:.3f} at compute share "
        f"{oof['compute_share']:.3f}, {oof['escalation_rate']:.1%} to large"
    )


@app.command("eval")
@guarded
def eval_command(
    router: Path = typer.Option(..., "--router", help="Folder written by `fslm route train`."),
    small: Path = typer.Option(..., "--small", help="Small system's run on held-out items."),
    large: Path = typer.Option(..., "--large", help="Large system's run on the same items."),
    calibration: Path | None = typer.Option(None, "--calibration", help="Cascade calibration to compare against."),
    signals: Path | None = typer.Option(None, "--signals", help="Signals JSONL (if the cascade uses --signal verify)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Write router.json, router.md and router.png here."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Router vs random routing at the same rate vs the calibrated cascade, on items the router never saw."""
    from fslm.collaborate.route import eval_runs

    if out_dir is not None:
        check_output(out_dir, "--out", folder=True)
    with status("embedding prompts…", enabled=not json_output):
        report = eval_runs(router, small, large, calibration=calibration, signals=signals, out_dir=out_dir)
    if json_output:
        print_json({k: v for k, v in report.items() if k != "router_curve"})
        return
    table = Table(title=f"routing on {report['n']} held-out items")
    for col in ("policy", "accuracy", "compute share", "to large"):
        table.add_column(col)
    for name in ("router", "random", "cascade"):
        p = report.get(name)
        if p:
            table.add_row(name, f"{p['acc']:.3f}", f"{p['compute_share']:.3f}", f"{p['escalation_rate']:.1%}")
    out.print(table)


@app.command("predict")
@guarded
def predict_command(
    prompts: list[str] = typer.Argument(..., help="Prompts to route."),
    router: Path = typer.Option(..., "--router", help="Folder written by `fslm route train`."),
) -> None:
    """Print P(small system right) and the routing decision for each prompt (no LM is run)."""
    from fslm.collaborate.route import Router, embed
    from fslm.stack import check_prompt_text

    for prompt in prompts:  # before the embedder loads
        check_prompt_text(prompt)
    model = Router.load(router)
    probs = model.predict(embed(prompts).vectors)
    print_json(
        [
            {"prompt": p, "p_small_right": round(float(x), 4), "route": "small" if x >= model.threshold else "large"}
            for p, x in zip(prompts, probs)
        ]
    )
