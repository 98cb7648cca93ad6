"""A small model as a plug-in hallucination checker: P(supported) of a free-form answer from its yes/no judgement.

For each (question, answer, passages) item the model reads a fixed raw prompt and two continuations are scored,
`" yes"` and `" no"`; P(supported) = softmax over the two = sigmoid((logp(yes) - logp(no)) / T), read by the same
code as the `verify` stage (`fslm.stages.verify.yes_no_probabilities`). With passages the question is "Is the answer
supported by these passages?"; without, "Is the answer true?" (the model's own knowledge).

The flag rule: an answer is flagged unsupported when P(supported) < threshold. `fit_checker` picks both knobs on
held-out labelled items: the temperature T by NLL (temperature scaling, `fslm.evaluate.calibration`), then the
threshold on the scaled probabilities that maximises F1 of the "unsupported" class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fslm.engine import Engine
from fslm.errors import DataError, InputError
from fslm.stages.calibration import check_threshold
from fslm.stages.verify import yes_no_probabilities

CHECK_TEMPLATE = "Question: {question}\nProposed answer: {answer}\nIs the answer true? Answer yes or no.\nAnswer:"
CHECK_PASSAGES_TEMPLATE = (
    "Passages:\n{passages}\n\nQuestion: {question}\nProposed answer: {answer}\n"
    "Is the answer supported by these passages? Answer yes or no.\nAnswer:"
)
YES, NO = " yes", " no"


@dataclass(frozen=True)
class CheckItem:
    """One answer to check; `passages` None = judge from the model's own knowledge."""

    question: str
    answer: str
    passages: tuple[str, ...] | None = None


def check_item(obj: CheckItem | Mapping | Sequence, where: str = "item") -> CheckItem:
    """A CheckItem from a CheckItem, a {question, answer, passages?} mapping or a (question, answer[, passages])
    tuple; InputError naming `where` for anything else, an empty text or an empty passage list."""
    if isinstance(obj, CheckItem):
        question, answer, passages = obj.question, obj.answer, obj.passages
    elif isinstance(obj, Mapping):
        unknown = set(obj) - {"question", "answer", "passages"}
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        question, answer, passages = obj.get("question"), obj.get("answer"), obj.get("passages")
    elif isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) in (2, 3):
        question, answer, passages = obj[0], obj[1], obj[2] if len(obj) == 3 else None
    else:
        raise InputError(f"{where}: expected (question, answer[, passages]) or a mapping, got {type(obj).__name__}")
    for name, text in (("question", question), ("answer", answer)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: '{name}' must be a non-empty string, got {text!r}")
    if passages is not None:
        if isinstance(passages, str) or not isinstance(passages, Sequence):
            raise InputError(f"{where}: 'passages' must be a list of strings or null, got {type(passages).__name__}")
        if not passages:
            raise InputError(f"{where}: 'passages' is an empty list; pass null to check without passages")
        if not all(isinstance(p, str) and p.strip() for p in passages):
            raise InputError(f"{where}: every passage must be a non-empty string")
        passages = tuple(passages)
    return CheckItem(question, answer, passages)


def check_prompt(item: CheckItem) -> str:
    """The exact text the yes/no continuations are scored after."""
    question, answer = item.question.strip(), item.answer.strip()
    if item.passages is None:
        return CHECK_TEMPLATE.format(question=question, answer=answer)
    listed = "\n".join(f"[{k}] {p.strip()}" for k, p in enumerate(item.passages, 1))
    return CHECK_PASSAGES_TEMPLATE.format(passages=listed, question=question, answer=answer)


def p_supported(
    engine: Engine,
    items: Iterable[CheckItem | Mapping | Sequence],
    *,
    temperature: float = 1.0,
    adapter: str | None = None,
) -> list[float]:
    """P(supported) per item (module docstring), in item order; one `engine.score` call for all of them."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature must be a finite number > 0, got {temperature!r}")
    checked = [check_item(x, f"item {i}") for i, x in enumerate(items)]
    if not checked:
        return []
    judged = yes_no_probabilities(
        engine, [check_prompt(x) for x in checked], YES, NO, adapter=adapter, temperature=temperature
    )
    return [p for p, _, _ in judged]


def flag_unsupported(probs: Sequence[float], threshold: float) -> list[bool]:
    """The flag rule: unsupported when P(supported) < threshold."""
    check_threshold(threshold)
    return [p < threshold for p in probs]


@dataclass(frozen=True)
class Cut:
    """A threshold and what flagging `score < threshold` as unsupported gives on the items it was chosen on."""

    threshold: float
    precision: float
    recall: float
    f1: float
    flagged: int
    n: int


def flag_scores(flagged: np.ndarray, unsupported: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, F1) of the "unsupported" class; precision 0 when nothing is flagged."""
    tp = float(np.sum(flagged & unsupported))
    n_flag, n_pos = float(np.sum(flagged)), float(np.sum(unsupported))
    precision = tp / n_flag if n_flag else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * tp / (n_flag + n_pos) if n_flag + n_pos else 0.0
    return precision, recall, f1


def best_cut(scores: Sequence[float], unsupported: Sequence[bool], *, ceiling: float | None = None) -> Cut:
    """The threshold maximising F1 of "unsupported" under `score < threshold`, over every distinct cut: midpoints
    between consecutive distinct scores, and one above the largest (flag all; with a `ceiling`, thresholds stay at
    or below it). Ties go to the lowest threshold (fewest flags). Works for any real-valued score (a probability,
    or minus a length)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(unsupported, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise InputError(f"{s.size} scores but {y.size} labels")
    if s.size == 0 or not y.any():
        raise InputError("choosing a threshold needs labelled items with at least one unsupported answer")
    if not np.all(np.isfinite(s)):
        raise InputError("scores must be finite numbers")
    values = np.unique(s)
    if ceiling is None:
        top = [values[-1] + 1.0]
    else:
        top = [(values[-1] + ceiling) / 2] if values[-1] < ceiling else []
    candidates = np.concatenate(((values[:-1] + values[1:]) / 2, top))
    if candidates.size == 0:  # every score equals the ceiling: no cut flags anything
        candidates = np.asarray([float(ceiling)])
    best: Cut | None = None
    for t in candidates:
        flagged = s < t
        precision, recall, f1 = flag_scores(flagged, y)
        if best is None or f1 > best.f1 + 1e-12:
            best = Cut(float(t), precision, recall, f1, int(flagged.sum()), int(s.size))
    assert best is not None
    return best


def choose_threshold(probs: Sequence[float], unsupported: Sequence[bool]) -> Cut:
    """`best_cut` on probabilities: the F1-best threshold in [0, 1] for the flag rule."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise InputError("P(supported) values must lie in [0, 1]")
    return best_cut(p, unsupported, ceiling=1.0)


@dataclass(frozen=True)
class CheckerFit:
    """Temperature and threshold chosen on held-out items; apply as `flag_unsupported(scale(p), threshold)`."""

    temperature: float
    threshold: float
    precision: float  # on the held-out items, at the threshold
    recall: float
    f1: float
    n: int

    def scale(self, probs: Sequence[float]) -> list[float]:
        from fslm.evaluate.calibration import scale_binary

        return [float(x) for x in scale_binary(probs, self.temperature)] if len(probs) else []

    def flag(self, probs: Sequence[float]) -> list[bool]:
        return flag_unsupported(self.scale(probs), self.threshold)

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def fit_checker(probs: Sequence[float], unsupported: Sequence[bool]) -> CheckerFit:
    """Temperature scaling of P(supported) against the labels (NLL on these items), then the F1-best threshold on
    the scaled probabilities. Temperature scaling is monotone, so it never changes which items a cut separates."""
    from fslm.evaluate.calibration import fit_binary_temperature, scale_binary

    y = np.asarray(unsupported, dtype=bool)
    cut = choose_threshold(probs, y)  # validates probs and labels first
    if y.all():
        raise InputError("fitting a temperature needs held-out items with at least one supported answer")
    temperature = fit_binary_temperature(probs, ~y)
    cut = choose_threshold(scale_binary(probs, temperature), y)
    return CheckerFit(temperature, cut.threshold, cut.precision, cut.recall, cut.f1, cut.n)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """P(a positive item scores higher than a negative one), ties 1/2 (scikit-learn's ROC AUC); nan without both
    classes, so a bootstrap resample with one class is skipped rather than an error. For the checker: scores =
    1 - P(supported), positive = unsupported."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(positive, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


# ---- file-level twins of the CLI ------------------------------------------------------------------------------------
LABEL = "supported"  # the optional per-row label of a checker file: true = the answer is supported / true
CHECKER_KIND = "fslm-checker"
DEFAULT_K = 3  # passages per question from an index
PASSAGE_CHARS = 400  # a retrieved passage is cut to this many characters (at a word boundary), as in the benchmark


def with_retrieved(items: Sequence[CheckItem], index: str | Path, k: int = DEFAULT_K) -> list[CheckItem]:
    """Items without passages get the k best passages for their question from a retrieval index (a built index
    folder or a recipe, `fslm retrieve`); items that bring passages keep them; a question with no hit stays without."""
    from fslm.retrieve.recipe import open_index
    from fslm.stages.retrieve import clip

    if not (isinstance(k, int) and k >= 1):
        raise InputError(f"--k must be at least 1, got {k!r}")
    missing = [i for i, x in enumerate(items) if x.passages is None]
    if not missing:
        return list(items)
    retriever = open_index(index)
    hits = retriever.search([items[i].question for i in missing], k)
    out = list(items)
    for i, row in zip(missing, hits, strict=True):
        passages = tuple(clip(h.passage.text, PASSAGE_CHARS).strip() for h in row if h.passage.text.strip())
        out[i] = CheckItem(items[i].question, items[i].answer, passages or None)
    return out


def read_check_file(path: str | Path, *, labelled: bool = False) -> tuple[list[CheckItem], list[dict]]:
    """(items, extras) of a JSONL file of {question, answer, passages?, id?, supported?} rows; extras keep each
    row's `id` and `supported`. `labelled`: every row needs a boolean `supported`. Errors name file and line."""
    from fslm.io import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected JSONL rows of question, answer, passages)")
    items, extras = [], []
    bad = "{path}:{line}: expected a JSON object per line ({problem})"
    for lineno, row in iter_jsonl(path, bad_line=bad):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        extra = {k: row[k] for k in ("id", LABEL) if k in row}
        if LABEL in extra and not isinstance(extra[LABEL], bool):
            raise DataError(f"{where}: '{LABEL}' must be true or false, got {extra[LABEL]!r}")
        if labelled and LABEL not in extra:
            raise DataError(f"{where}: no '{LABEL}' label (true/false), which fitting a checker needs")
        try:
            items.append(check_item({k: v for k, v in row.items() if k not in ("id", LABEL)}, where))
        except InputError as err:
            raise DataError(str(err)) from None
        extras.append(extra)
    if not items:
        raise DataError(f"{path}: no rows")
    return items, extras


def _labels_report(probs: Sequence[float], extras: Sequence[Mapping], threshold: float | None) -> dict | None:
    """AUROC (and, with a threshold, precision/recall/F1 of the flag) when every row is labelled."""
    if not extras or not all(LABEL in e for e in extras):
        return None
    unsupported = np.array([not e[LABEL] for e in extras])
    p = np.asarray(probs, dtype=np.float64)
    report = {"n": int(unsupported.size), "n_unsupported": int(unsupported.sum()), "auroc": None}
    score = auroc(1.0 - p, unsupported)
    report["auroc"] = None if math.isnan(score) else round(score, 6)
    if threshold is not None:
        precision, recall, f1 = flag_scores(p < threshold, unsupported)
        report |= {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6)}
    return report


def read_checker(path: str | Path) -> dict:
    """A checker file written by `fit_checker_file`, validated."""
    from fslm.io import read_json_object

    data = read_json_object(Path(path))
    if data.get("kind") != CHECKER_KIND:
        raise DataError(f"{path}: not a checker file (written by `fslm check fit`)")
    t, th = data.get("temperature"), data.get("threshold")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise DataError(f"{path}: 'temperature' must be a finite number > 0, got {t!r}")
    if not (isinstance(th, (int, float)) and 0.0 <= th <= 1.0):
        raise DataError(f"{path}: 'threshold' must be in [0, 1], got {th!r}")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise DataError(f"{path}: 'model' must name the checker's model")
    return data


def fit_checker_file(
    items: str | Path,
    model: str,
    out: str | Path | None = None,
    *,
    index: str | Path | None = None,
    k: int = DEFAULT_K,
    engine=None,
) -> dict:
    """Fit a checker (temperature, F1-best threshold) on labelled held-out rows, rows without passages given the k
    best from `index` when one is named; with `out`, write it as JSON (it records the model, index and k)."""
    from fslm.engine import load_engine
    from fslm.io import write_json

    checked, extras = read_check_file(items, labelled=True)
    if len({e[LABEL] for e in extras}) < 2:  # before any passage or model is loaded
        raise DataError(f"{items}: fitting a checker needs both supported and unsupported answers")
    if index is not None:
        checked = with_retrieved(checked, index, k)
    engine = engine or load_engine(model)
    probs = p_supported(engine, checked)
    unsupported = [not e[LABEL] for e in extras]
    fit = fit_checker(probs, unsupported)
    with_passages = {x.passages is not None for x in checked}
    result = {
        "kind": CHECKER_KIND,
        "model": model,
        **fit.to_dict(),
        "n_unsupported": int(sum(unsupported)),
        "auroc": _labels_report(probs, extras, None)["auroc"],
        "passages": "mixed" if len(with_passages) == 2 else ("with" if True in with_passages else "without"),
        "index": None if index is None else str(index),
        "k": k if index is not None else None,
        "fitted_on": str(items),
    }
    if out is not None:
        write_json(out, result)
    return result


def check_file(
    items: str | Path,
    model: str | None = None,
    *,
    checker: str | Path | None = None,
    index: str | Path | None = None,
    k: int | None = None,
    out: str | Path | None = None,
    engine=None,
) -> tuple[list[dict], dict | None]:
    """(rows, label report) for every row of `items`: P(supported), and with a fitted `checker` its calibrated value
    and the flag; the report (AUROC, and flag precision/recall/F1 with a checker) when every row has a label. Rows
    without passages get the k best from `index` (default: the checker's index and k, which a checker needs)."""
    from fslm.engine import load_engine
    from fslm.evaluate.calibration import scale_binary
    from fslm.io import write_jsonl

    fitted = read_checker(checker) if checker is not None else None
    if fitted is not None and model is not None and model != fitted["model"]:
        raise InputError(f"--model {model}: the checker {checker} was fitted for {fitted['model']}")
    model = model or (fitted["model"] if fitted else None)
    if model is None:
        raise InputError("give --model, or --checker FILE from `fslm check fit` (it names its model)")
    if fitted is not None:  # scored the way the checker was fitted, or its threshold means nothing
        for name, given, fit_value in (("--index", index, fitted.get("index")), ("--k", k, fitted.get("k"))):
            if given is not None and str(given) != str(fit_value):
                raise InputError(f"{name} {given}: the checker {checker} was fitted with {fit_value}")
        index, k = fitted.get("index"), fitted.get("k")
    checked, extras = read_check_file(items)
    if index is not None:
        checked = with_retrieved(checked, index, DEFAULT_K if k is None else k)
    engine = engine or load_engine(model)
    probs = p_supported(engine, checked)
    rows, calibrated = [], []
    for item, extra, p in zip(checked, extras, probs, strict=True):
        row = {**({"id": extra["id"]} if "id" in extra else {}), "question": item.question, "answer": item.answer}
        if item.passages is not None:
            row["passages"] = list(item.passages)
        row["p_supported"] = round(p, 6)
        scaled = p if fitted is None else float(scale_binary([p], fitted["temperature"])[0])
        if fitted is not None:
            row |= {"p_supported_calibrated": round(scaled, 6), "unsupported": scaled < fitted["threshold"]}
        calibrated.append(scaled)
        if LABEL in extra:
            row[LABEL] = extra[LABEL]
        rows.append(row)
    report = _labels_report(calibrated, extras, fitted["threshold"] if fitted else None)
    if out is not None:
        write_jsonl(out, rows)
    return rows, report


__all__ = [
    "CHECK_PASSAGES_TEMPLATE",
    "CHECK_TEMPLATE",
    "CheckItem",
    "CheckerFit",
    "Cut",
    "auroc",
    "best_cut",
    "check_file",
    "check_item",
    "check_prompt",
    "choose_threshold",
    "fit_checker",
    "fit_checker_file",
    "flag_scores",
    "flag_unsupported",
    "p_supported",
    "read_check_file",
    "read_checker",
    "with_retrieved",
]
