"""`fslm check`: a small model as a hallucination checker for free-form answers.

`fslm check ITEMS.jsonl --model M` (same as `fslm check run`) scores P(supported) per row; `fslm check fit` picks the
temperature and the flag threshold on labelled held-out rows, and `--checker` applies them.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fslm.cli.common import RunByDefault, check_model, check_output, default_of, guarded, out, print_json, status
from fslm.collaborate.checker import DEFAULT_K, fit_checker_file  # for their defaults (no torch)

app = typer.Typer(
    cls=RunByDefault,
    no_args_is_help=True,
    help="Hallucination checker: a small model's P(supported) for free-form answers, with or without passages.",
)

ITEMS_HELP = "JSONL rows {question, answer, passages?: [..], id?, supported?: true/false}."
INDEX_HELP = "Retrieval index (`fslm retrieve index`) whose best passages rows without passages are checked against"


@app.command("run")
@guarded
def run_command(
    items: Path = typer.Argument(..., help=ITEMS_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help="Checker model (default: the --checker's)."),
    checker: Path | None = typer.Option(None, "--checker", help="Fitted checker from `fslm check fit`."),
    index: Path | None = typer.Option(None, "--index", help=INDEX_HELP + " (default: the checker's)."),
    k: int | None = typer.Option(
        None, "--k", help=f"Passages per question from --index (default: the checker's, or {DEFAULT_K})."
    ),
    out_file: Path | None = typer.Option(None, "--out", help="Write the scored rows here (JSONL)."),
    json_output: bool = typer.Option(False, "--json", help="Print the rows and the label report as JSON."),
) -> None:
    """P(supported) per answer (with --checker: calibrated, and flagged); labelled rows also get AUROC and F1."""
    from fslm.collaborate.checker import check_file

    if model is not None:
        check_model(model, "--model")
    if out_file is not None:
        check_output(out_file, "--out", folder=False)
    with status("checking answers…", enabled=not json_output):
        rows, report = check_file(items, model, checker=checker, index=index, k=k, out=out_file)
    if json_output:
        print_json({"rows": rows, "labels": report})
        return
    table = Table(title=f"{len(rows)} answers")
    for col in ("question", "answer", "P(supported)", "flag"):
        table.add_column(col, overflow="fold")
    for row in rows[:20]:
        p = row.get("p_supported_calibrated", row["p_supported"])
        flag = "" if "unsupported" not in row else ("unsupported" if row["unsupported"] else "ok")
        table.add_row(row["question"][:80], row["answer"][:80], f"{p:.4f}", flag)
    out.print(table)
    if len(rows) > 20:
        out.print(f"… {len(rows) - 20} more" + (f" in {out_file}" if out_file else " (--out FILE keeps them all)"))
    if report is not None:
        line = f"labels: {report['n_unsupported']} of {report['n']} unsupported; AUROC {report['auroc']}"
        if "f1" in report:
            line += f"; flag precision {report['precision']:.3f}, recall {report['recall']:.3f}, F1 {report['f1']:.3f}"
        out.print(line, highlight=False)


@app.command("fit")
@guarded
def fit_command(
    items: Path = typer.Argument(..., help="Labelled held-out rows: " + ITEMS_HELP),
    model: str = typer.Option(..., "--model", "-m", help="Checker model."),
    index: Path | None = typer.Option(None, "--index", help=INDEX_HELP + "."),
    k: int = typer.Option(default_of(fit_checker_file, "k"), "--k", help="Passages per question from --index."),
    out_file: Path = typer.Option(..., "--out", help="Checker file to write (JSON)."),
    json_output: bool = typer.Option(False, "--json", help="Print the fitted checker as JSON."),
) -> None:
    """Fit the checker on labelled held-out rows: temperature by NLL, then the F1-best threshold of "unsupported"."""
    check_model(model, "--model")
    check_output(out_file, "--out", folder=False)
    with status("scoring the labelled answers…", enabled=not json_output):
        fitted = fit_checker_file(items, model, out_file, index=index, k=k)
    if json_output:
        print_json(fitted)
        return
    out.print(
        f"checker saved to {out_file}: flag unsupported when P(supported) < {fitted['threshold']:.4f} after T "
        f"{fitted['temperature']:.3f}; on these {fitted['n']} rows ({fitted['n_unsupported']} unsupported): precision "
        f"{fitted['precision']:.3f}, recall {fitted['recall']:.3f}, F1 {fitted['f1']:.3f}, AUROC {fitted['auroc']}",
        highlight=False,
    )
