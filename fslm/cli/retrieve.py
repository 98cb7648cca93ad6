"""`fslm retrieve ...`: build a passage corpus, index it with BM25, search it (what a retrieve stage reads)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fslm.cli.common import check_output, check_text, guarded, out, print_json, status

app = typer.Typer(no_args_is_help=True, help="Retrieval: build a passage corpus, index it (BM25), search it.")


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
        100, "--heldout-keep", min=0, help="Held-out items per task (`--split heldout`) kept out of the corpus."
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
    from fslm.retrieve.corpus import write_corpus

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
) -> None:
    """Build a BM25 index (bm25s, English stopwords + Snowball stemmer) over a passage file."""
    from fslm.retrieve import index_passages

    check_output(out_dir, "--out", folder=True)
    with status("indexing…"):
        retriever = index_passages(passages, out_dir)
    out.print(f"indexed {len(retriever.passages)} passages -> {out_dir}")


@app.command("search")
@guarded
def search_command(
    index_dir: Path = typer.Argument(..., help="Folder written by `fslm retrieve index`."),
    queries: list[str] = typer.Argument(..., help="Queries."),
    k: int = typer.Option(3, "-k", min=1, help="Passages per query."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Print the k best passages for each query."""
    from fslm.retrieve import search

    for query in queries:
        check_text(query, "query")
    results = search(index_dir, queries, k)
    if json_output:
        print_json(
            [
                {
                    "query": q,
                    "hits": [
                        {
                            "rank": h.rank,
                            "score": round(h.score, 4),
                            "id": h.passage.id,
                            "source": h.passage.source,
                            "text": h.passage.text,
                        }
                        for h in hits
                    ],
                }
                for q, hits in zip(queries, results, strict=True)
            ]
        )
        return
    for query, hits in zip(queries, results, strict=True):
        out.print(f"[bold]{query}[/]", highlight=False)
        if not hits:
            out.print("  (no passage shares a term with the query)")
        for h in hits:
            out.print(f"  {h.rank}. [{h.score:.2f}] {h.passage.id}: {h.passage.text}", highlight=False, markup=False)
