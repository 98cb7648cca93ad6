"""Curation by a small proxy model: score every instruction record, keep the best fraction.

Two signals, both cheap next to training on the data:

* perplexity: the small model's mean negative log-likelihood per token of the output given the instruction (through
  the Engine protocol's `score`), lower = more likely = kept first. Outputs a small model finds likely are the ones it
  can learn from; very unlikely ones are often noise, another language or garbled text.
* quality (optional): a logistic regression on all-MiniLM-L6-v2 sentence embeddings, trained on a labelled file of
  good and bad examples the user gives, or that a larger judge model labelled on a sample (fslm.distill.judge);
  the probability of "good", higher = kept first. Ranked by quality alone, no language model is loaded.
* random (`by="random"`): the baseline at equal N, a seeded random order over the same scorable records (those with
  an output); no model is loaded. Each record's place comes from a hash of the seed and its id, so the order does not
  depend on file order and a rerun with another seed only re-selects.

Scores go to a resumable JSONL (one line per record, fsynced per batch, the DistillStore pattern), so a killed run
continues where it stopped and a rerun with another --keep only re-selects. At the end the kept records (same format
as the input) and the scores file (now with rank and kept) are each written whole and renamed into place.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fslm.distill.candidates import Candidate, random_key, read_candidates
from fslm.distill.judge import DEFAULT_JUDGE_N, judge_records, judged_path
from fslm.distill.quality import QualityClassifier, labels_digest, record_text
from fslm.distill.store import DistillStore, setup_mismatch
from fslm.engine import Engine, load_engine
from fslm.errors import ConfigError
from fslm.extras import require
from fslm.io import atomic_file, write_atomic, write_jsonl
from fslm.tasks.instructions import default_data_path

SIGNALS = ("perplexity", "quality", "both")
RANKINGS = (*SIGNALS, "random")
DEFAULT_SCORER = "smollm2-135m"
ENDS = 3  # records shown from each end of the ranking


@dataclass
class CurateOptions:
    keep: float = 0.5  # fraction of the scorable records kept (ignored when `top` is set)
    top: int | None = None  # keep exactly the best N instead of a fraction
    by: str | None = (
        None  # perplexity, quality, both (mean of the two rank percentiles) or random; None: both with labels
    )
    labels: str | Path | None = None  # labelled good/bad examples that train the quality classifier
    batch_size: int = 16  # records scored (and judged) per engine call and per fsync
    seed: int = 0  # by="random": the seed of the order; with a judge: of its sample
    judge: str | Engine | None = None  # instead of labels: a larger model labels a sample (fslm.distill.judge)
    judge_n: int = DEFAULT_JUDGE_N  # records the judge labels
    judge_dtype: str = "float32"  # the judge's dtype when loaded from a reference


@dataclass
class CurateReport:
    out: str
    scores: str
    format: str  # "alpaca" or "distilled"
    model: str | None  # the perplexity model; None when the ranking needs none (by quality or random)
    records: int  # unique records in the input
    duplicates: int  # duplicate records skipped (Alpaca input)
    unscorable: dict[str, int] = field(default_factory=dict)  # reason -> records never kept
    already_scored: int = 0
    scored: int = 0  # scored by this run
    kept: int = 0
    by: str = "perplexity"
    seed: int | None = None  # by="random": the seed of the order
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> distribution summary
    cutoff: dict[str, float] = field(default_factory=dict)  # signal -> its worst value among the kept records
    # the records at each end of the ranking (a look at what the score prefers): {"best": [...], "worst": [...]}
    ends: dict[str, list[dict]] = field(default_factory=dict)
    judge: dict = field(default_factory=dict)  # with a judge: its JudgeReport (labels file, median, classes)
    repaired_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ScoreStore(DistillStore):
    noun = "score"
    verb = "fslm curate"
    keep_records = True

    def mismatch(self, stored: dict) -> str | None:
        """Scores from another model or classifier cannot be ranked together with this run's."""
        assert self.identity is not None
        return setup_mismatch(
            self.path, stored, self.identity, "scores came from", "delete it or pass another --scores"
        )


def scores_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".scores.jsonl")


def _resolve_by(options: CurateOptions) -> str:
    quality = options.labels is not None or options.judge is not None
    by = options.by or ("both" if quality else "perplexity")
    if by not in RANKINGS:
        raise ConfigError(f"--by {by!r}: choose one of {', '.join(RANKINGS)}")
    if by == "random":
        if quality:
            raise ConfigError(f"--by random ranks by no score: leave out {'--labels' if options.labels else '--judge'}")
        return by
    if by != "perplexity" and not quality:
        raise ConfigError(
            f"--by {by} needs --labels (a file of good and bad examples) or --judge (a model that labels a sample) to "
            "train the quality classifier"
        )
    return by


def check_options(options: CurateOptions) -> str:
    if options.top is not None and options.top < 1:
        raise ConfigError(f"--top must be >= 1, got {options.top}")
    if not 0 < options.keep <= 1:
        raise ConfigError(f"--keep must be a fraction in (0, 1], got {options.keep}")
    if options.batch_size < 1:
        raise ConfigError("batch size must be >= 1")
    if options.judge is not None:
        from fslm.models import DTYPES  # torch only when loading

        if options.labels is not None:
            raise ConfigError("--judge labels records for the quality classifier, and so does --labels: give one")
        if options.judge_n < 2:
            raise ConfigError(f"--judge-n must be >= 2 (a good and a bad half), got {options.judge_n}")
        if options.judge_dtype not in DTYPES:
            raise ConfigError(f"--judge-dtype {options.judge_dtype!r}: expected float32 or bfloat16 (or float16)")
    return _resolve_by(options)


def _eligible_batch(batch: Sequence[Candidate]) -> list[dict]:
    """The rows of a random ranking: no score, only whether a record can be kept at all (it has an output)."""
    rows: list[dict] = [{"id": c.id, "index": c.index} for c in batch]
    for row, c in zip(rows, batch):
        if not c.output.strip():
            row["unscorable"] = "no_output"
    return rows


def _score_batch(engine: Engine | None, batch: Sequence[Candidate], quality: QualityClassifier | None) -> list[dict]:
    """Each record's signals: `nll` from `engine` (None: not ranked by perplexity), `quality` from the classifier."""
    rows: list[dict] = [{"id": c.id, "index": c.index} for c in batch]
    todo = []
    for row, c in zip(rows, batch):
        if not c.output.strip():
            row["unscorable"] = "no_output"
        elif engine is not None and engine.count_tokens(c.output) > engine.context_window - 1:
            row["unscorable"] = "too_long"
        else:
            todo.append((row, c))
    if todo and engine is not None:
        contexts = [engine.render_chat([{"role": "user", "content": c.prompt}]) for _, c in todo]
        for (row, _), score in zip(todo, engine.score(contexts, [c.output for _, c in todo]), strict=True):
            row["nll"] = round(-score.logprob / score.n_tokens, 6)
            row["tokens"] = score.n_tokens
    if todo and quality is not None:
        probs = quality.predict([record_text(c.prompt, c.output) for _, c in todo])
        for (row, _), p in zip(todo, probs, strict=True):
            row["quality"] = round(float(p), 6)
    return rows


def _percentiles(values: Sequence[float], higher_better: bool) -> list[float]:
    """Each value's rank percentile in (0, 1], 1 = best; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=higher_better)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = 1 - (i + j) / 2 / len(values)
        i = j + 1
    return ranks


def select(rows: list[dict], by: str, keep: float, top: int | None, seed: int = 0) -> list[dict]:
    """Add `rank` (1 = best; unscorable rows last, unranked) and `kept` to every row; returns the rows."""
    scorable = [r for r in rows if "unscorable" not in r]
    if scorable and by == "random":
        keys = [random_key(seed, r["id"]) for r in scorable]
        order = sorted(range(len(scorable)), key=lambda i: keys[i])
    elif scorable:
        parts = []
        if by in ("perplexity", "both"):
            parts.append(_percentiles([r["nll"] for r in scorable], higher_better=False))
        if by in ("quality", "both"):
            parts.append(_percentiles([r["quality"] for r in scorable], higher_better=True))
        merit = [sum(p[i] for p in parts) / len(parts) for i in range(len(scorable))]
        order = sorted(range(len(scorable)), key=lambda i: -merit[i])  # stable: ties keep file order
    if scorable:
        n = min(top, len(scorable)) if top is not None else max(1, math.floor(keep * len(scorable) + 1e-9))
        for rank, i in enumerate(order, 1):
            scorable[i]["rank"] = rank
            scorable[i]["kept"] = rank <= n
    for r in rows:
        r.setdefault("rank", None)
        r.setdefault("kept", False)
    return rows


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Count, mean and quantiles (linear interpolation) of one score."""
    v = sorted(values)
    if not v:
        return {"count": 0}

    def q(p: float) -> float:
        x = p * (len(v) - 1)
        lo = math.floor(x)
        return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (x - lo)

    stats = {"count": len(v), "mean": sum(v) / len(v), "min": v[0]}
    stats.update({f"p{p}": q(p / 100) for p in (10, 25, 50, 75, 90)})
    stats["max"] = v[-1]
    return {k: (n if k == "count" else round(n, 4)) for k, n in stats.items()}


def curate(
    data: str | Path | None,
    out: str | Path,
    *,
    model: str | Engine = DEFAULT_SCORER,
    scores: str | Path | None = None,
    options: CurateOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    plot: str | Path | None = None,
    dtype: str = "float32",
    backend: str = "hf",
    judge_progress: Callable[[int, int], None] | None = None,
) -> CurateReport:
    """Python twin of `fslm curate`. `model` is the small scoring model: an Engine, or a reference loaded only once
    the input validated, records are left to score and the ranking uses perplexity. `progress(done, total)` follows
    every fsynced batch, `judge_progress` every judged one (with `options.judge`, whose labelled sample goes to
    `<out stem>.judged.jsonl` and trains the quality classifier as a --labels file would)."""
    options = options or CurateOptions()
    by = check_options(options)
    if by == "random" and plot is not None:
        raise ConfigError("--plot draws the scores, and --by random has none")
    data = Path(data) if data is not None else default_data_path()
    fmt, candidates, duplicates, unusable = read_candidates(data)
    scores = Path(scores) if scores is not None else scores_path(out)
    if Path(out).resolve() in (Path(data).resolve(), scores.resolve()) or Path(data).resolve() == scores.resolve():
        raise ConfigError(f"--out {out}, the data and --scores {scores} must be three different files")
    judged = judged_path(out) if options.judge is not None else None
    if judged is not None and judged.resolve() in (Path(data).resolve(), scores.resolve()):
        raise ConfigError(f"the judged labels go to {judged}: pick an --out whose name does not clash with the data")
    if plot is not None:
        require("eval", "--plot")  # matplotlib
    digest = labels_digest(options.labels) if options.labels is not None else None  # validates the file, too
    perplexity = by in ("perplexity", "both")
    ref = (model if isinstance(model, str) else model.model_ref) if perplexity else "random" if by == "random" else None
    t0 = time.perf_counter()
    report = CurateReport(str(out), str(scores), fmt, ref, len(candidates), duplicates, by=by)
    if by == "random":
        report.seed = options.seed
    if unusable:
        report.unscorable["filtered_by_distill"] = unusable
    labels, identity = options.labels, {"model": ref, "quality": digest}
    if judged is not None:  # the judged file (its digest) names the classifier, as a --labels file does
        require("collaborate", "the quality classifier (--judge)")
        got = judge_records(
            options.judge,
            candidates,
            judged,
            n=options.judge_n,
            seed=options.seed,
            batch_size=options.batch_size,
            dtype=options.judge_dtype,
            backend=backend,
            progress=judge_progress,
        )
        report.judge = got.to_dict()
        labels, identity = judged, {**identity, "quality": labels_digest(judged), "judge": got.judge}
    with ScoreStore(scores, identity) as store:
        todo = [c for c in candidates if c.id not in store.done]
        report.repaired_bytes = store.repaired_bytes
        report.already_scored = len(candidates) - len(todo)
        if progress:
            progress(0, len(todo))
        if todo and by == "random":
            for start in range(0, len(todo), options.batch_size):
                report.scored += store.append(_eligible_batch(todo[start : start + options.batch_size]))
                if progress:
                    progress(report.scored, len(todo))
        elif todo:  # models load only now: a rerun that only re-selects loads none
            quality = QualityClassifier.train(labels) if labels is not None else None
            engine = None  # ranked by quality alone: no language model
            if perplexity:
                engine = model if not isinstance(model, str) else load_engine(model, dtype=dtype, backend=backend)
            for start in range(0, len(todo), options.batch_size):
                report.scored += store.append(_score_batch(engine, todo[start : start + options.batch_size], quality))
                if progress:
                    progress(report.scored, len(todo))
        rows = {r["id"]: {k: v for k, v in r.items() if k not in ("rank", "kept", "stale")} for r in store.records}
    final = select([rows[c.id] for c in candidates], by, options.keep, options.top, options.seed)
    wanted = {c.id for c in candidates}
    stray = [r for r in rows.values() if r["id"] not in wanted]  # scored for another input: stays on file, unranked
    _fill_report(report, final, perplexity, labels is not None)
    if by != "random":
        report.ends = ranking_ends(final, candidates)
    kept_ids = {r["id"] for r in final if r["kept"]}
    kept = [c.raw for c in candidates if c.id in kept_ids]  # input order
    if fmt == "json":
        write_atomic(out, json.dumps(kept, indent=4, ensure_ascii=False) + "\n")
    else:
        write_jsonl(out, kept)
    write_jsonl(scores, [*final, *({**r, "rank": None, "kept": False, "stale": True} for r in stray)])
    if plot is not None:
        plot_scores(plot, final, by)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _fill_report(report: CurateReport, final: list[dict], with_nll: bool, with_quality: bool) -> None:
    for r in final:
        if "unscorable" in r:
            report.unscorable[r["unscorable"]] = report.unscorable.get(r["unscorable"], 0) + 1
    scorable = [r for r in final if "unscorable" not in r]
    winners = [r for r in scorable if r["kept"]]
    report.kept = len(winners)
    if with_nll:
        report.summary["nll"] = summarize([r["nll"] for r in scorable])
        if winners:
            report.cutoff["nll"] = max(r["nll"] for r in winners)
    if with_quality:
        report.summary["quality"] = summarize([r["quality"] for r in scorable])
        if winners:
            report.cutoff["quality"] = min(r["quality"] for r in winners)


def ranking_ends(rows: list[dict], candidates: Sequence[Candidate], k: int = ENDS, chars: int = 240) -> dict:
    """The `k` best- and worst-ranked scorable records with their scores and (shortened) texts."""
    by_id = {c.id: c for c in candidates}
    ranked = sorted((r for r in rows if r.get("rank") is not None and r["id"] in by_id), key=lambda r: r["rank"])

    def show(row: dict) -> dict:
        c = by_id[row["id"]]
        scores = {key: row[key] for key in ("nll", "quality") if key in row}
        return {"id": c.id, "rank": row["rank"], **scores, "prompt": c.prompt[:chars], "output": c.output[:chars]}

    return {"best": [show(r) for r in ranked[:k]], "worst": [show(r) for r in ranked[-k:][::-1]]}


def plot_scores(path: str | Path, rows: list[dict], by: str) -> None:
    """Histogram of each score, kept and dropped records stacked, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorable = [r for r in rows if "unscorable" not in r]
    signals = [
        (key, label)
        for key, label in (
            ("nll", "mean NLL per output token (lower = kept first)"),
            ("quality", "P(good) from the quality classifier"),
        )
        if scorable and key in scorable[0]
    ]
    fig, axes = plt.subplots(1, len(signals), figsize=(6 * len(signals), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], signals):
        kept = [r[key] for r in scorable if r["kept"]]
        dropped = [r[key] for r in scorable if not r["kept"]]
        ax.hist([kept, dropped], bins=30, stacked=True, label=["kept", "dropped"], color=["tab:green", "tab:gray"])
        ax.set_xlabel(label)
        ax.set_ylabel("records")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"fslm curate: {len(scorable)} records scored, ranked by {by}")
    fig.tight_layout()
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, dpi=110, format="png")
    finally:
        plt.close(fig)
