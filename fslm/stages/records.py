"""What a stack run leaves behind: one `StageRecord` per stage (in trace order) and the `StackResult` around them.

Fields are only ever added (with defaults), never renamed: traces are stored (serve, logs) and read back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StageRecord:
    stage: str
    input: str  # the exact text the model was given (chat template applied); a tool's or retriever's query text
    output: str
    tokens_in: int
    tokens_out: int
    seconds: float
    adapter: str | None = None
    finish_reason: str = "stop"  # "retrieved", "scored", "tool" or "skipped" for those stages
    retrieved: tuple[str, ...] = ()  # a retrieve stage's passage ids, best first
    kind: str = "generate"  # generate | retrieve | score | tool | verify | vote | escalate
    model: str | None = None  # the model reference of the engine that ran it (None: no model ran)
    skipped: str | None = None  # why the stage did not run (None: it ran); a skipped stage costs nothing
    when: str | None = None  # the stage's condition, when it has one and it held
    options: tuple[str, ...] = ()  # a score stage: the options it chose among, in the prompt's order
    option_scores: tuple[float, ...] = ()  # ... and each one's summed log-probability (the margin is read off these)
    option_tokens: tuple[int, ...] = ()
    errors: tuple[str, ...] = ()  # a tool stage: expressions it found but refused or could not compute
    confidence: float | None = None  # score: choice margin; verify: P(yes); vote: agreement; escalate: the one read
    decision: str | None = None  # vote: how the drafts voted; escalate: which branch ran and why
    escalated: bool | None = None  # an escalate stage: whether the larger system answered
    drafts: tuple[str, ...] = ()  # a vote stage's sampled drafts, in order
    score_format: str | None = None  # the format the option scores were computed in (chat or raw)
    sub_trace: tuple[dict, ...] = ()  # an escalation to another stack: that stack's trace records

    @property
    def choice(self) -> int | None:
        """A score stage's chosen option (index), None for other stages."""
        if not self.option_scores:
            return None
        return max(range(len(self.option_scores)), key=self.option_scores.__getitem__)

    @property
    def margin(self) -> float | None:
        """A score stage's confidence: the best option's log-probability minus the runner-up's."""
        if len(self.option_scores) < 2:
            return None
        best, second = sorted(self.option_scores, reverse=True)[:2]
        return best - second


@dataclass
class StackResult:
    prompt: str
    answer: str
    trace: list[StageRecord] = field(default_factory=list)
    answer_stage: str | None = None  # the stage whose text is the answer (None: a partial run)

    @property
    def outputs(self) -> dict[str, str]:
        """The texts of the stages that ran (a skipped stage has none)."""
        return {r.stage: r.output for r in self.trace if r.skipped is None}

    @property
    def answer_record(self) -> StageRecord | None:
        return next((r for r in self.trace if r.stage == self.answer_stage), None)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "trace": [asdict(r) for r in self.trace],
            "tokens_in": sum(r.tokens_in for r in self.trace),
            "tokens_out": sum(r.tokens_out for r in self.trace),
            "seconds": round(sum(r.seconds for r in self.trace), 4),
            "answer_stage": self.answer_stage,
        }


def skipped_record(stage: str, kind: str, reason: str) -> StageRecord:
    return StageRecord(stage, "", "", 0, 0, 0.0, None, "skipped", kind=kind, skipped=reason)


def generation_record(stage: str, text: str, gen, adapter: str | None, model: str, when=None) -> StageRecord:
    """A generate stage's record from its input text and the engine's `Generation` (one place builds it)."""
    return StageRecord(
        stage,
        text,
        gen.text,
        gen.tokens_in,
        gen.tokens_out,
        gen.seconds,
        adapter,
        gen.finish_reason,
        kind="generate",
        model=model,
        when=when,
    )


class ReadyRecords:
    """Passes each prompt's records on as soon as they exist, in trace order: a record goes out once every wanted
    stage before it has its record (a skipped stage has one too), so the receiver sees the final order, early."""

    def __init__(
        self,
        order: Sequence[str],
        n: int,
        shown: Callable[[StageRecord, Mapping[str, StageRecord]], StageRecord],
        on_record: Callable[[int, StageRecord], None] | None,
    ):
        self.order, self.shown, self.on_record = list(order), shown, on_record
        self.sent = [0] * n

    def pass_on(self, results: Sequence[StackResult]) -> None:
        if self.on_record is None:
            return
        for i, result in enumerate(results):
            have = {rec.stage: rec for rec in result.trace}
            while self.sent[i] < len(self.order) and self.order[self.sent[i]] in have:
                self.on_record(i, self.shown(have[self.order[self.sent[i]]], have))
                self.sent[i] += 1
