"""Live cascades: actually run the small system, measure its confidence, and call the large one only when needed.

A *system* is a model reference or a stack YAML. Free-text prompts use the AutoMix-style self-verification signal
(the small model is asked whether the small answer is correct; P(yes) is the confidence). Multiple-choice items also
have the choice-probability margin. Per-item rows use the `fslm eval` items.jsonl fields, plus `escalated`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fslm.collaborate.runs import Run
from fslm.engine import Engine, GenerationParams, load_engine
from fslm.errors import InputError
from fslm.stages.calibration import check_threshold
from fslm.stages.conditions import choice_margin
from fslm.stages.verify import yes_no_probabilities
from fslm.tasks import Item

VERIFY_TEMPLATE = (
    "Question: {question}\nProposed answer: {answer}\nIs the proposed answer correct? Answer yes or no.\nAnswer:"
)
VERIFY_CHOICES = (" yes", " no")


def _is_stack_ref(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml"))


@dataclass
class Answer:
    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    trace: list[dict] = field(default_factory=list)


class System:
    """A model or a stack behind one interface: answer prompts, score multiple-choice items."""

    def __init__(self, ref: str, *, engine: Engine | None = None, dtype: str = "float32", max_new_tokens: int = 128):
        from fslm.stack import Stack

        self.ref = ref
        self.max_new_tokens = max_new_tokens
        if _is_stack_ref(ref):
            self.stack = Stack.load(ref, engine=engine)
            self.engine = self.stack.engine
        else:
            self.stack = None
            self.engine = engine or load_engine(ref, dtype=dtype)

    @property
    def params(self) -> int:
        return self.engine.params

    def answer(self, prompts: Sequence[str]) -> list[Answer]:
        if self.stack is not None:
            results = self.stack.run_batch(prompts)
            return [
                Answer(
                    r.answer,
                    sum(s.tokens_in for s in r.trace),
                    sum(s.tokens_out for s in r.trace),
                    sum(s.seconds for s in r.trace),
                    r.to_dict()["trace"],
                )
                for r in results
            ]
        texts = [self.engine.render_chat([{"role": "user", "content": p}]) for p in prompts]
        gens = self.engine.generate(texts, GenerationParams(max_new_tokens=self.max_new_tokens))
        return [Answer(g.text, g.tokens_in, g.tokens_out, g.seconds) for g in gens]

    def score_items(self, items: Sequence[Item]) -> list[dict]:
        """`fslm eval` rows for multiple-choice items, scored by the evaluator's own code (models and stacks)."""
        from fslm.evaluate import ModelSystem, StackSystem, make_row

        for item in items:
            if not item.choices:
                raise InputError(
                    f"{item.id}: live cascades score multiple-choice items; {item.task} is a generation task"
                )
        system = StackSystem(self.stack) if self.stack is not None else ModelSystem(self.engine)
        return [make_row(item, outcome) for item, outcome in zip(items, system.answer_choices(items, {}), strict=True)]


def verify(engine: Engine, questions: Sequence[str], answers: Sequence[str]) -> list[tuple[float, int, float]]:
    """(P(yes), tokens scored, seconds) per (question, answer): the model judging an answer, AutoMix-style."""
    contexts = [
        VERIFY_TEMPLATE.format(question=q.strip(), answer=a.strip()) for q, a in zip(questions, answers, strict=True)
    ]
    t0 = time.perf_counter()
    judged = yes_no_probabilities(engine, contexts, *VERIFY_CHOICES)
    seconds = (time.perf_counter() - t0) / max(len(contexts), 1)
    return [
        (p, engine.count_tokens(context) + yes.n_tokens + no.n_tokens, seconds)
        for context, (p, yes, no) in zip(contexts, judged, strict=True)
    ]


def run_items(run: Run, split: str | None = None) -> list[Item]:
    """The task items a run's rows answer: `split` if given, else the split the run says it was evaluated on."""
    from fslm.tasks.splits import select_items

    if split is not None and run.split is not None and split != run.split:
        raise InputError(f"--split {split}: the run {run.path} was evaluated on split {run.split!r}")
    tasks = sorted({r["task"] for r in run.rows})
    return [it for t in tasks for it in select_items(t, None, split or run.split)]


def verify_signal_rows(engine: Engine, items: Sequence[Item], rows: Sequence[dict]) -> list[dict]:
    """Signals-file rows {task, id, verify, verify_flops, verify_seconds} for a small run's predictions."""
    by_key = {(it.task, it.id): it for it in items}
    unknown = [r["id"] for r in rows if (r["task"], r["id"]) not in by_key]
    if unknown:  # a wrong split would otherwise verify a silent subset of the run
        raise InputError(
            f"{len(unknown)} of {len(rows)} run rows are not items of the loaded split (first: {unknown[0]!r}); "
            "pass the split the run was evaluated on (--split)"
        )
    pairs = []
    for row in rows:
        item = by_key[(row["task"], row["id"])]
        if not item.choices or not isinstance(row.get("prediction"), int):
            continue  # generation tasks: no chosen option to verify
        pairs.append((row, item))
    if not pairs:
        raise InputError("no run row has a multiple-choice item and an integer 'prediction' to verify")
    results = verify(engine, [it.question for _, it in pairs], [it.choices[r["prediction"]] for r, it in pairs])
    return [
        {
            "task": r["task"],
            "id": r["id"],
            "verify": round(p, 6),
            "verify_flops": 2.0 * engine.params * tokens,
            "verify_seconds": round(sec, 5),
        }
        for (r, _), (p, tokens, sec) in zip(pairs, results, strict=True)
    ]


@dataclass
class CascadeAnswer:
    prompt: str
    answer: str
    escalated: bool
    confidence: float
    small: Answer
    large: Answer | None = None

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "escalated": self.escalated,
            "confidence": round(self.confidence, 4),
            "small": self.small.__dict__,
            "large": self.large.__dict__ if self.large else None,
        }


def cascade_prompts(prompts: Sequence[str], small: System, large: System, threshold: float) -> list[CascadeAnswer]:
    """Small answers; the small model verifies; answers with P(yes) < threshold are redone by the large system."""
    check_threshold(threshold)
    first = small.answer(prompts)
    checks = verify(small.engine, prompts, [a.text for a in first])
    results = [
        CascadeAnswer(p, a.text, c[0] < threshold, c[0], a) for p, a, c in zip(prompts, first, checks, strict=True)
    ]
    redo = [r for r in results if r.escalated]
    if redo:
        for r, big in zip(redo, large.answer([r.prompt for r in redo]), strict=True):
            r.large, r.answer = big, big.text
    return results


def cascade_items(
    items: Sequence[Item], small: System, large: System, *, signal: str = "verify", threshold: float
) -> tuple[list[dict], dict]:
    """Score items with the small system, escalate low-confidence ones to the large system; rows + summary."""
    check_threshold(threshold)
    rows = small.score_items(items)
    small_cost = [2.0 * small.params * r["tokens_in"] for r in rows]
    if signal == "margin":
        conf = [choice_margin(r["choice_scores"]) for r in rows]
        extra = [0.0] * len(rows)
    elif signal == "verify":
        sig = verify_signal_rows(small.engine, items, rows)
        conf, extra = [s["verify"] for s in sig], [s["verify_flops"] for s in sig]
    else:
        raise InputError(f"unknown signal {signal!r}; choose margin or verify")
    escalate = [i for i, c in enumerate(conf) if c < threshold]
    big_rows = large.score_items([items[i] for i in escalate]) if escalate else []
    cost = sum(small_cost) + sum(extra)
    for i, big in zip(escalate, big_rows, strict=True):
        cost += 2.0 * large.params * big["tokens_in"]
        rows[i] = {**big, "small_prediction": rows[i]["prediction"], "seconds": rows[i]["seconds"] + big["seconds"]}
    escalated = set(escalate)
    for i, row in enumerate(rows):
        row["escalated"] = i in escalated
        row["confidence"] = conf[i]
        row["stages"] = ["small", "large"] if row["escalated"] else ["small"]
    summary = {
        "small": small.ref,
        "large": large.ref,
        "signal": signal,
        "threshold": threshold,
        "n": len(rows),
        "acc": sum(r["correct"] for r in rows) / len(rows),
        "escalation_rate": len(escalate) / len(rows),
        "flops": cost,
    }
    return rows, summary
