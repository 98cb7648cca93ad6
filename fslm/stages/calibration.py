"""A calibrated confidence threshold as data: what `fslm cascade calibrate` writes and what an `escalate` stage and
a router read. Below the code that computes it (fslm.collaborate) so stages read it without importing the
collaboration patterns."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fslm.errors import DataError, InputError
from fslm.io import read_json_object, write_json

SIGNAL_OF_KIND = {"score": "margin", "vote": "margin", "verify": "verify"}  # `fslm cascade calibrate --signal`


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold} is outside [0, 1]: signals are probabilities/margins in [0, 1]")
    return threshold


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on calibration items; saved as JSON and reused on other items."""

    signal: str
    threshold: float
    target: float  # fraction of the large system's accuracy to keep
    small_acc: float
    large_acc: float
    acc: float
    compute_share: float
    escalation_rate: float
    n: int
    met: bool  # False when no threshold reaches the target (then the most accurate one is returned)

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: calibration file not found; create it with `fslm cascade calibrate`")
        data = read_json_object(path)  # a truncated or garbled file: one error naming file, line and column
        try:
            cal = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except KeyError as err:
            raise DataError(f"{path}: not a calibration file written by `fslm cascade calibrate` ({err})") from None
        if not isinstance(cal.threshold, (int, float)) or isinstance(cal.threshold, bool):
            raise DataError(f"{path}: 'threshold' is {cal.threshold!r}, not a number")
        check_threshold(cal.threshold)
        return cal
