"""Labels for the quality classifier from a larger model's judgement (the FineWeb-Edu / "textbook quality" pattern).

When no labelled set exists, a larger model (the judge) reads a seeded sample of the records and the small MiniLM
classifier learns its verdicts, then scores every record cheaply: one judge forward per judged record, not per
record. The judge answers a fixed yes/no question under its own chat template; its P(yes) is read the way the
verify stage reads it (`fslm.stages.verify.yes_no_probabilities`). A record is "good" when its P(yes) is at or above
the sample's median, "bad" below: the classes are balanced whatever the judge's calibration (a judge that says yes to
everything still ranks), and the classifier learns the judge's ordering, not its threshold. The comparison is made on
the log-odds log P(yes) - log P(no), the same order as P(yes) but without the ties of a probability that rounds to
0 or 1 in floating point.

The labelled file is a resumable store (one fsynced append per batch, the DistillStore pattern): a killed or
enlarged run judges only the sampled records not on file. At the end it is written whole, in sample order with
`label`, and renamed into place, in the format `fslm.distill.quality.read_labels` reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fslm.distill.candidates import Candidate, random_key
from fslm.distill.store import DistillStore, setup_mismatch
from fslm.engine import Engine, load_engine
from fslm.errors import DataError
from fslm.io import write_jsonl
from fslm.stages.verify import p_yes, yes_no_probabilities

DEFAULT_JUDGE_N = 200
JUDGE_SYSTEM = "You review instruction-following data for training a small assistant. Be strict."
JUDGE_USER = (
    "Instruction:\n{prompt}\n\nResponse:\n{output}\n\n"
    "Is the response a correct, helpful and complete answer to the instruction? Answer yes or no."
)
# the reply's first word right after the assistant header, so no leading space
YES, NO = "yes", "no"
PROMPT_DIGEST = hashlib.sha256("\0".join((JUDGE_SYSTEM, JUDGE_USER, YES, NO)).encode()).hexdigest()[:16]


@dataclass
class JudgeReport:
    labels: str  # the labelled file
    judge: str  # the judge's model reference
    sample: int  # records in the judged sample
    already_judged: int = 0  # found on file (resumed)
    judged: int = 0  # judged by this run
    median: float = 0.0  # the sample's median P(yes): the good/bad threshold
    median_log_odds: float = 0.0  # the same threshold as log P(yes) - log P(no)
    good: int = 0
    bad: int = 0
    repaired_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class JudgeStore(DistillStore):
    noun = "judged"
    verb = "fslm curate --judge"
    keep_records = True

    def mismatch(self, stored: dict) -> str | None:
        """Verdicts of another judge or prompt are not comparable with this run's, so the median would mix them."""
        assert self.identity is not None
        return setup_mismatch(self.path, stored, self.identity, "records were judged with", "delete it to judge again")


def judged_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".judged.jsonl")


def judge_sample(candidates: Sequence[Candidate], n: int, seed: int) -> list[Candidate]:
    """The `n` records with an output that come first in the seeded order (curate's `random_key`): the same records
    whatever the file order, and a larger `n` with the same seed only adds records."""
    eligible = [c for c in candidates if c.output.strip()]
    return sorted(eligible, key=lambda c: random_key(seed, c.id))[:n]


def judge_context(engine: Engine, c: Candidate) -> str:
    """The exact text whose yes/no continuations the judge scores."""
    user = JUDGE_USER.format(prompt=c.prompt.strip(), output=c.output.strip())
    return engine.render_chat([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}])


def _judge_batch(engine: Engine, batch: Sequence[Candidate]) -> list[dict]:
    judged = yes_no_probabilities(engine, [judge_context(engine, c) for c in batch], YES, NO)
    return [
        {"id": c.id, "instruction": c.prompt, "output": c.output, "p_yes": p, "log_odds": yes.logprob - no.logprob}
        for c, (p, yes, no) in zip(batch, judged, strict=True)
    ]


def median(values: Sequence[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def judge_records(
    judge: str | Engine,
    candidates: Sequence[Candidate],
    out: str | Path,
    *,
    n: int = DEFAULT_JUDGE_N,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float32",
    backend: str = "hf",
    progress: Callable[[int, int], None] | None = None,
) -> JudgeReport:
    """Judge a seeded sample of `n` records and write them to `out` labelled good (P(yes) >= the sample's median) or
    bad. `judge` is an Engine, or a reference loaded only when sampled records are left to judge. `progress(done,
    total)` follows every fsynced batch. The judge's dtype and engine are not recorded: keep them fixed on resume."""
    sample = judge_sample(candidates, n, seed)
    if len(sample) < 2:
        raise DataError(f"--judge needs at least 2 records with an output to judge; the data has {len(sample)}")
    ref = judge if isinstance(judge, str) else judge.model_ref
    report = JudgeReport(str(out), ref, len(sample))
    with JudgeStore(out, {"judge": ref, "prompt": PROMPT_DIGEST}) as store:
        report.repaired_bytes = store.repaired_bytes
        todo = [c for c in sample if c.id not in store.done]
        report.already_judged = len(sample) - len(todo)
        if progress:
            progress(0, len(todo))
        if todo:  # loaded only now: a rerun with everything judged loads no judge
            engine = judge if not isinstance(judge, str) else load_engine(judge, dtype=dtype, backend=backend)
            for start in range(0, len(todo), batch_size):
                report.judged += store.append(_judge_batch(engine, todo[start : start + batch_size]))
                if progress:
                    progress(report.judged, len(todo))
        on_file = {r["id"]: r for r in store.records}
    rows = [{k: v for k, v in on_file[c.id].items() if k != "label"} for c in sample]
    for r in rows:
        if not all(isinstance(r.get(k), (int, float)) and not isinstance(r[k], bool) for k in ("p_yes", "log_odds")):
            raise DataError(f"{out}: record {r['id']!r} lacks a numeric p_yes or log_odds; fix or delete that line")
    threshold = median([r["log_odds"] for r in rows])
    report.median, report.median_log_odds = float(f"{p_yes(threshold, 0.0):.6g}"), round(threshold, 4)
    for r in rows:
        r["label"] = "good" if r["log_odds"] >= threshold else "bad"
    report.good = sum(r["label"] == "good" for r in rows)
    report.bad = len(rows) - report.good
    if not report.bad:
        raise DataError(f"{out}: the judge gave all {len(rows)} records the same P(yes); nothing to tell good from bad")
    write_jsonl(out, rows)  # sample order; records judged for another sample are dropped
    return report
