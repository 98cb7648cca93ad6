"""Cascade analysis: escalate to the large system when the small system's confidence is below a threshold.

Pure functions over paired per-item outcomes (`fslm.collaborate.runs.Pair`): the cost/accuracy point of a threshold,
the whole curve, the random-escalation baseline at the same rate, and threshold calibration for a quality target.
Compute share = (small cost on every item + signal cost + large cost on escalated items) / (large cost on every item).
The live counterpart (actually running small, then large) is `fslm.collaborate.live`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fslm.collaborate.runs import Pair
from fslm.errors import DataError, InputError
from fslm.io import atomic_file, write_atomic, write_json
from fslm.stages.calibration import Calibration, check_threshold

SIGNALS = ("margin", "verify")


@dataclass(frozen=True)
class Point:
    threshold: float
    acc: float
    compute_share: float
    escalation_rate: float

    def to_dict(self) -> dict:
        return {k: round(v, 6) for k, v in asdict(self).items()}


def _signal(pair: Pair, signal: str) -> float:
    try:
        return pair.signals[signal]
    except KeyError:
        have = sorted(pair.signals) or "none"
        raise DataError(
            f"item {pair.task}/{pair.id} has no {signal!r} signal (it has: {have}). 'margin' needs choice_scores in the "
            "small run's items.jsonl; 'verify' needs a signals file from `fslm cascade signals`"
        ) from None


def accuracy(pairs: Sequence[Pair], which: str) -> float:
    return sum(getattr(p, f"{which}_correct") for p in pairs) / len(pairs)


def _large_total(pairs: Sequence[Pair]) -> float:
    total = sum(p.large_cost for p in pairs)
    if total <= 0:
        raise DataError("the large run has zero total cost (no tokens and no seconds per item)")
    return total


def cascade_point(pairs: Sequence[Pair], signal: str, threshold: float) -> Point:
    """Answer with the small system unless its signal < threshold, then pay for the large one too."""
    check_threshold(threshold)
    if not pairs:
        raise DataError("no items to evaluate")
    correct = cost = escalated = 0.0
    for p in pairs:
        cost += p.small_cost + p.extra_cost.get(signal, 0.0)
        if _signal(p, signal) < threshold:
            escalated += 1
            cost += p.large_cost
            correct += p.large_correct
        else:
            correct += p.small_correct
    n = len(pairs)
    return Point(threshold, correct / n, cost / _large_total(pairs), escalated / n)


def always(pairs: Sequence[Pair], which: str) -> Point:
    """Always-small (threshold 0) or always-large (no small call at all)."""
    cost = sum(p.small_cost if which == "small" else p.large_cost for p in pairs)
    return Point(
        0.0 if which == "small" else 1.0, accuracy(pairs, which), cost / _large_total(pairs), float(which == "large")
    )


def random_escalation(pairs: Sequence[Pair], rate: float, *, small_first: bool = True) -> Point:
    """Expected accuracy/cost when a random `rate` share of items is escalated (exact expectation, no sampling).

    small_first=True is a cascade with a coin instead of a signal (the small system still answers every item);
    False is random routing (escalated items never touch the small system).
    """
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"escalation rate {rate} is outside [0, 1]")
    n = len(pairs)
    acc = sum((1 - rate) * p.small_correct + rate * p.large_correct for p in pairs) / n
    small_share = 1.0 if small_first else 1 - rate
    cost = sum(small_share * p.small_cost + rate * p.large_cost for p in pairs)
    return Point(rate, acc, cost / _large_total(pairs), rate)


def candidate_thresholds(pairs: Sequence[Pair], signal: str, grid: int = 41) -> list[float]:
    """Every distinct signal value (each one changes the decision of some item) plus a regular grid, in [0, 1]."""
    values = {round(min(max(_signal(p, signal), 0.0), 1.0), 6) for p in pairs}
    values.update(i / (grid - 1) for i in range(grid))
    return sorted(values)


def curve(pairs: Sequence[Pair], signal: str, thresholds: Sequence[float] | None = None) -> list[Point]:
    return [cascade_point(pairs, signal, t) for t in (thresholds or candidate_thresholds(pairs, signal))]


def calibrate(pairs: Sequence[Pair], signal: str = "margin", target: float = 0.95) -> Calibration:
    """The cheapest threshold whose accuracy on these items is >= target x the large system's accuracy."""
    if signal not in SIGNALS:
        raise InputError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    if not 0.0 < target <= 1.5:
        raise InputError(f"target {target} should be a fraction of the large system's accuracy, e.g. 0.95")
    if len(pairs) < 5:
        raise DataError(f"only {len(pairs)} calibration items; calibrate on at least 5 (better a few hundred)")
    large_acc, small_acc = accuracy(pairs, "large"), accuracy(pairs, "small")
    points = curve(pairs, signal)
    goal = target * large_acc
    ok = [p for p in points if p.acc >= goal - 1e-12]
    best = (
        min(ok, key=lambda p: (p.compute_share, -p.acc)) if ok else max(points, key=lambda p: (p.acc, -p.compute_share))
    )
    return Calibration(
        signal,
        best.threshold,
        target,
        small_acc,
        large_acc,
        best.acc,
        best.compute_share,
        best.escalation_rate,
        len(pairs),
        bool(ok),
    )


def evaluate(pairs: Sequence[Pair], calibration: Calibration, *, thresholds: Sequence[float] | None = None) -> dict:
    """Report-items view: the calibrated point, the curve, and the baselines, as the `cascade.json` schema."""
    signal = calibration.signal
    at = cascade_point(pairs, signal, calibration.threshold)
    rand = random_escalation(pairs, at.escalation_rate)
    return {
        "signal": signal,
        "n": len(pairs),
        "small_acc": round(accuracy(pairs, "small"), 6),
        "large_acc": round(accuracy(pairs, "large"), 6),
        "calibrated": {**at.to_dict(), "target": calibration.target, "calibrated_on": calibration.n},
        "random_same_rate": rand.to_dict(),
        "always_small": always(pairs, "small").to_dict(),
        "always_large": always(pairs, "large").to_dict(),
        "points": [p.to_dict() for p in curve(pairs, signal, thresholds)],
    }


def by_task(pairs: Sequence[Pair]) -> dict[str, list[Pair]]:
    groups: dict[str, list[Pair]] = {}
    for p in pairs:
        groups.setdefault(p.task, []).append(p)
    return groups


def plot_curves(
    path: str | Path, curves: Mapping[str, Sequence[Point]], markers: Mapping[str, Point], title: str
) -> Path:
    """Accuracy vs compute share: one line per signal, the random-escalation line, and the fixed systems as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, points in curves.items():
        pts = sorted(points, key=lambda p: p.compute_share)
        ax.plot(
            [p.compute_share for p in pts],
            [p.acc for p in pts],
            marker="." if len(pts) < 60 else None,
            linestyle="--" if label.startswith("random") else "-",
            label=label,
        )
    for label, p in markers.items():
        ax.scatter([p.compute_share], [p.acc], s=60, zorder=5, label=label)
    ax.set_xlabel("compute share (cost / always-large cost)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, dpi=120, format="png")
    finally:
        plt.close(fig)
    return Path(path)


# ---- file-level twins of the CLI ------------------------------------------------------------------------------------
def load_pairs(small: str | Path, large: str | Path, signals: str | Path | None = None) -> list[Pair]:
    from fslm.collaborate.runs import pair_runs, read_run
    from fslm.evaluate.store import read_signals

    values, costs = read_signals(signals) if signals else ({}, {})
    return pair_runs(read_run(small), read_run(large), signals=values, signal_costs=costs)


def calibrate_runs(
    small: str | Path,
    large: str | Path,
    *,
    signal: str = "margin",
    target: float = 0.95,
    signals: str | Path | None = None,
    out: str | Path | None = None,
) -> Calibration:
    """Python twin of `fslm cascade calibrate`: choose the threshold on calibration (dev/train) runs."""
    cal = calibrate(load_pairs(small, large, signals), signal, target)
    if out is not None:
        cal.save(out)
    return cal


def markdown(report: Mapping) -> str:
    rows = [
        ("always small", report["always_small"]),
        ("always large", report["always_large"]),
        (f"cascade ({report['signal']} < {report['calibrated']['threshold']:.3f})", report["calibrated"]),
        ("random escalation, same rate", report["random_same_rate"]),
    ]
    lines = [
        f"Cascade on {report['n']} items (threshold calibrated on {report['calibrated']['calibrated_on']} other items, "
        f"target {report['calibrated']['target']:.0%} of large accuracy)",
        "",
        "| system | accuracy | compute share | escalated |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {p['acc']:.3f} | {p['compute_share']:.3f} | {p['escalation_rate']:.1%} |" for name, p in rows
    ]
    return "\n".join(lines) + "\n"


def evaluate_runs(
    small: str | Path,
    large: str | Path,
    calibration: str | Path | Calibration,
    *,
    signals: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> dict:
    """Python twin of `fslm cascade eval`: the calibrated cascade on report runs, with curve PNG and markdown."""
    cal = calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
    pairs = load_pairs(small, large, signals)
    report = evaluate(pairs, cal)
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "cascade.json", report)
        write_atomic(out / "cascade.md", markdown(report))
        curves = {f"cascade ({name})": curve(pairs, name) for name in SIGNALS if all(name in p.signals for p in pairs)}
        rates = [i / 20 for i in range(21)]
        curves["random escalation"] = [random_escalation(pairs, r) for r in rates]
        markers = {
            "always small": always(pairs, "small"),
            "always large": always(pairs, "large"),
            "calibrated cascade": Point(**{k: report["calibrated"][k] for k in Point.__dataclass_fields__}),
        }
        plot_curves(out / "cascade.png", curves, markers, f"cascade on {len(pairs)} items")
    return report
