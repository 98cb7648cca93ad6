"""Calibration of confidence signals: expected calibration error, reliability diagrams, temperature scaling.

Pure functions on numbers (no model). A multiple-choice row's confidence is the softmax, over its options, of the
summed option log-likelihoods (``choice_scores`` in items.jsonl) divided by a temperature T; the prediction is the
argmax (which no T > 0 changes) and its confidence the top probability. A binary signal that is already a
probability (a router's P(small system is right), a verifier's P(yes)) is the two-option case: its scores are
[log p, log(1 - p)], so temperature scaling gives sigmoid(logit(p) / T).

* **ECE** (expected calibration error): equal-width bins over [0, 1] (bin k holds confidences in [k/B, (k+1)/B), the
  last bin also holds 1.0); ECE = sum over bins of (items in bin / all items) * |accuracy in bin - mean confidence in
  bin|. 0 is perfect. With few items per bin it is biased upwards (sampling noise never cancels inside |.|), so
  compare ECEs on the same items and bins, and read the bootstrap interval.
* **Reliability diagram**: per bin, mean confidence against accuracy; a calibrated signal lies on the diagonal.
* **Temperature scaling** (Guo et al., 2017): one scalar T > 0 chosen to minimise the negative log-likelihood of the
  gold option on held-out items, then applied to other items. The NLL is convex in 1/T, so a bounded 1-D search
  on log T finds its minimum: scipy's bounded Brent (``minimize_scalar``) when scipy is installed, else a golden-
  section search on the same interval (same optimum to ~1e-6 in log T). T > 1 softens an overconfident signal,
  T < 1 sharpens an underconfident one. When an item has several true options (TruthfulQA mc2) the likelihood is
  that of the true set: -log sum_{g in gold} p_T(g).
* **Platt scaling** (binary signals only): sigmoid(a * logit(p) + b), a and b fitted by unregularised logistic
  regression on held-out items. Temperature scaling is the b = 0 case; the intercept is what moves a signal whose
  values sit far from its event's rate (a verifier answering P(yes) ~ 0.07 for answers right half the time).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_BINS = 10
T_BOUNDS = (0.01, 100.0)
_EPS = 1e-12


# --- softmax over ragged option scores ------------------------------------------------------------------------------


def pad_scores(score_rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Ragged per-item option scores -> [n, max options], missing options as -inf (probability 0)."""
    width = max((len(r) for r in score_rows), default=0)
    out = np.full((len(score_rows), width), -np.inf, dtype=np.float64)
    for i, row in enumerate(score_rows):
        if len(row) == 0:
            raise ValueError(f"item {i} has no option scores")
        out[i, : len(row)] = np.asarray(row, dtype=np.float64)
    if np.any(np.isnan(out)) or np.any(out == np.inf) or (out.size and not np.all(np.max(out, axis=1) > -np.inf)):
        raise ValueError("option scores must be finite (or -inf for an impossible option, not all of an item's)")
    return out


def log_softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of scores / T (a [n, k] array, -inf entries allowed)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = scores / temperature
    top = np.max(z, axis=1, keepdims=True)
    shifted = z - top
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def softmax(scores: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """Probabilities of one item's options at temperature T."""
    return np.exp(log_softmax(pad_scores([scores]), temperature)[0])


def top_confidence(score_rows: Sequence[Sequence[float]], temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, prediction) per item: the top option's probability at temperature T and its index (the first
    maximum on ties, as lm-eval)."""
    s = pad_scores(score_rows)
    pred = np.argmax(s, axis=1)
    logp = log_softmax(s, temperature)
    return np.exp(logp[np.arange(len(s)), pred]), pred


def gold_mask(gold_sets: Sequence[Sequence[int] | int], lengths: Sequence[int]) -> np.ndarray:
    """[n, max length] booleans marking each item's gold option(s); an index past the item's own options is an error."""
    if len(gold_sets) != len(lengths):
        raise ValueError(f"{len(lengths)} items but {len(gold_sets)} gold answers")
    mask = np.zeros((len(lengths), max(lengths, default=0)), dtype=bool)
    for i, (gold, options) in enumerate(zip(gold_sets, lengths, strict=True)):
        idx = [gold] if isinstance(gold, (int, np.integer)) else list(gold)
        if not idx or min(idx) < 0 or max(idx) >= options:
            raise ValueError(f"item {i}: gold {gold!r} is not an index into its {options} options")
        mask[i, idx] = True
    return mask


def nll(score_rows: Sequence[Sequence[float]], gold_sets: Sequence[Sequence[int] | int], temperature: float) -> float:
    """Mean negative log-likelihood of the gold option (or the gold set's total probability) at temperature T."""
    s = pad_scores(score_rows)
    return _nll(s, gold_mask(gold_sets, [len(r) for r in score_rows]), temperature)


def _nll(s: np.ndarray, mask: np.ndarray, temperature: float) -> float:
    logp = np.where(mask, log_softmax(s, temperature), -np.inf)
    top = np.max(logp, axis=1, keepdims=True)
    if not np.all(np.isfinite(top)):
        return math.inf  # a gold option scored -inf: no temperature gives it any probability
    gold = top[:, 0] + np.log(np.sum(np.exp(logp - top), axis=1))
    return float(-np.mean(gold))


# --- temperature scaling --------------------------------------------------------------------------------------------


def golden_section(f: Callable[[float], float], lo: float, hi: float, *, tol: float = 1e-7) -> float:
    """Minimiser of a unimodal f on [lo, hi] by golden-section search (the fallback when scipy is absent)."""
    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    best = (a + b) / 2
    # the interval ends are candidates too: the NLL can be monotone on it (always right, or never right)
    return min((lo, hi, best), key=f)


def fit_temperature(
    score_rows: Sequence[Sequence[float]],
    gold_sets: Sequence[Sequence[int] | int],
    *,
    bounds: tuple[float, float] = T_BOUNDS,
    use_scipy: bool = True,
) -> float:
    """The T in `bounds` minimising the mean gold NLL of these (held-out) items; search on log T."""
    if not score_rows:
        raise ValueError("no items to fit a temperature on")
    s = pad_scores(score_rows)
    mask = gold_mask(gold_sets, [len(r) for r in score_rows])
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def objective(log_t: float) -> float:
        return _nll(s, mask, math.exp(log_t))

    minimize = None
    if use_scipy:
        try:
            from scipy.optimize import minimize_scalar as minimize
        except ImportError:  # pragma: no cover - scipy comes with scikit-learn here
            minimize = None
    if minimize is not None:
        res = minimize(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
        best = min((lo, hi, float(res.x)), key=objective)
    else:
        best = golden_section(objective, lo, hi)
    return float(math.exp(best))


def binary_scores(probs: Sequence[float]) -> list[list[float]]:
    """A probability p of an event as two option scores [log p, log(1-p)] (clipped away from 0 and 1), so that the
    softmax at T is sigmoid(logit(p) / T): the same fit and scaling as multiple choice."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-9, 1 - 1e-9)
    return [[float(a), float(b)] for a, b in zip(np.log(p), np.log1p(-p), strict=True)]


def fit_binary_temperature(probs: Sequence[float], outcomes: Sequence[bool], **kwargs) -> float:
    """Temperature for a probability of an event (e.g. P(small system is right)) from observed outcomes."""
    return fit_temperature(binary_scores(probs), [0 if o else 1 for o in outcomes], **kwargs)


def scale_binary(probs: Sequence[float], temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T) per probability."""
    return np.exp(log_softmax(pad_scores(binary_scores(probs)), temperature)[:, 0])


def _logit(probs: Sequence[float]) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-9, 1 - 1e-9)
    return (np.log(p) - np.log1p(-p)).reshape(-1, 1)


def fit_platt(probs: Sequence[float], outcomes: Sequence[bool]) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(p) + b) maximising the likelihood of these (held-out) outcomes."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(outcomes, dtype=bool)
    if y.size == 0:
        raise ValueError("no items to fit Platt scaling on")
    if y.all() or not y.any():  # one class: the likelihood has no finite optimum; predict the (clipped) rate
        rate = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
        return 0.0, float(math.log(rate / (1 - rate)))
    model = LogisticRegression(C=np.inf, max_iter=1000).fit(_logit(probs), y)  # C = inf: no regularisation
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def scale_platt(probs: Sequence[float], a: float, b: float) -> np.ndarray:
    """sigmoid(a * logit(p) + b) per probability."""
    z = a * _logit(probs)[:, 0] + b
    return 1.0 / (1.0 + np.exp(-z))


# --- ECE and reliability diagrams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    n: int
    confidence: float | None  # mean confidence of its items (None when empty)
    accuracy: float | None  # share of its items that are right

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bin_index(confidence: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Equal-width bin of each confidence: floor(c * B), with c = 1.0 in the last bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    c = np.asarray(confidence, dtype=np.float64)
    if c.size and (np.any(c < 0) or np.any(c > 1) or not np.all(np.isfinite(c))):
        raise ValueError("confidences must lie in [0, 1]")
    return np.minimum((c * n_bins).astype(np.int64), n_bins - 1)


def reliability(confidence: Sequence[float], outcome: Sequence[bool], n_bins: int = DEFAULT_BINS) -> list[Bin]:
    """Reliability-diagram data: per equal-width bin, its item count, mean confidence and accuracy."""
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    if c.shape != y.shape:
        raise ValueError(f"{c.size} confidences but {y.size} outcomes")
    idx = bin_index(c, n_bins)
    bins = []
    for k in range(n_bins):
        sel = idx == k
        n = int(sel.sum())
        bins.append(
            Bin(
                k / n_bins,
                (k + 1) / n_bins,
                n,
                float(c[sel].mean()) if n else None,
                float(y[sel].mean()) if n else None,
            )
        )
    return bins


def ece(confidence: Sequence[float], outcome: Sequence[bool], n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with equal-width bins (module docstring); nan for no items."""
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    if c.shape != y.shape:
        raise ValueError(f"{c.size} confidences but {y.size} outcomes")
    if c.size == 0:
        return float("nan")
    return float(_ece_many(c[None, :], y[None, :], n_bins)[0])


def _ece_many(c: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of each row of [r, n] confidence/outcome arrays (bootstrap replicates), vectorised with bincount."""
    r, n = c.shape
    idx = bin_index(c, n_bins) + n_bins * np.arange(r)[:, None]
    size = r * n_bins
    conf_sum = np.bincount(idx.ravel(), weights=c.ravel(), minlength=size).reshape(r, n_bins)
    acc_sum = np.bincount(idx.ravel(), weights=y.ravel(), minlength=size).reshape(r, n_bins)
    return np.abs(acc_sum - conf_sum).sum(axis=1) / n  # sum_b n_b/N * |acc_b - conf_b| = sum_b |sum y - sum c| / N


def bootstrap_ece(
    outcome: Sequence[bool],
    before: Sequence[float],
    after: Sequence[float],
    *,
    n_bins: int = DEFAULT_BINS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Percentile-bootstrap 95% CIs of ECE before, after and of the paired difference (after - before), resampling
    items (the same resample for both)."""
    y = np.asarray(outcome, dtype=np.float64)
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if not (y.shape == b.shape == a.shape) or y.size == 0:
        raise ValueError("outcome, before and after need the same, non-zero number of items")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(n_boot, y.size))
    eb, ea = _ece_many(b[idx], y[idx], n_bins), _ece_many(a[idx], y[idx], n_bins)

    def ci(x: np.ndarray) -> list[float]:
        return [float(v) for v in np.quantile(x, [0.025, 0.975])]

    return {
        "before_ci95": ci(eb),
        "after_ci95": ci(ea),
        "diff_ci95": ci(ea - eb),
        "p_diff_ge_0": float(np.mean(ea - eb >= 0)),  # share of replicates where scaling did not lower ECE
    }


def reliability_plot(panels: Mapping[str, Mapping[str, Sequence[Bin]]], *, title: str = "", cols: int = 4) -> bytes:
    """PNG of reliability diagrams: one panel per key of `panels`, one line per curve ({label: bins}) of mean
    confidence against accuracy (marker area ~ items in the bin), and the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    cols = max(1, min(cols, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.0 * rows), squeeze=False)
    styles = ["o-", "s--", "^:", "d-."]
    for ax, name in zip(axes.ravel(), names, strict=False):
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        for k, (label, bins) in enumerate(panels[name].items()):
            full = [b for b in bins if b.n]
            total = max(sum(b.n for b in full), 1)
            xs, ys = [b.confidence for b in full], [b.accuracy for b in full]
            ax.plot(xs, ys, styles[k % len(styles)], label=label, linewidth=1, markersize=3)
            ax.scatter(xs, ys, s=[400 * b.n / total for b in full], alpha=0.25)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


__all__ = [
    "DEFAULT_BINS",
    "Bin",
    "binary_scores",
    "bootstrap_ece",
    "ece",
    "fit_binary_temperature",
    "fit_temperature",
    "golden_section",
    "log_softmax",
    "nll",
    "pad_scores",
    "reliability",
    "reliability_plot",
    "scale_binary",
    "softmax",
    "top_confidence",
]
