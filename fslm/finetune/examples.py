"""Training examples: exactly the text a stage is given at inference -> the stage's distilled target (+ end of turn).

The input is built by `Stack.stage_input` (the code `Stack.run` uses) with the DISTILLED earlier-stage targets as the
earlier outputs (teacher forcing), so a stage never trains on a prompt layout it will not see at inference.
`pair_examples` is the other kind: (context, continuation) pairs split into tokens exactly as the engine's `score`
splits them, for an answer stage that is scored on raw contexts (`--answer-format raw-adapter`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from fslm.config import StackConfig
from fslm.errors import DataError
from fslm.stack import Stack


@dataclass(frozen=True)
class Example:
    record_id: str
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]  # the target text's tokens plus the end-of-turn token; the only tokens with loss

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)

    @property
    def units(self) -> int:  # what the token losses average over: this example's share of a batch's mean
        return len(self.target_ids)

    @property
    def rows(self) -> tuple[Example, ...]:  # the sequences its forward pass holds
        return (self,)


@dataclass
class StageData:
    stage: str
    examples: list[Example] = field(default_factory=list)
    skipped_too_long: int = 0

    def fingerprint(self) -> str:
        """Identifies the exact token data, so a resumed run refuses checkpoints made from other data."""
        digest = hashlib.sha1()
        for ex in self.examples:
            digest.update(json.dumps([ex.record_id, ex.prompt_ids, ex.target_ids]).encode())
        return digest.hexdigest()[:16]


def usable_records(cfg: StackConfig, records: Sequence[dict], where: str) -> list[dict]:
    """Kept records that carry a string target for every stage; anything else is a data error naming the line."""
    names = [s.name for s in cfg.stages]
    usable = []
    for rec in records:
        line = f"{where}: line {rec.get('_line', '?')} (id {rec.get('id')!r})"
        if not rec.get("kept", True):
            continue
        if not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise DataError(f"{line}: missing or empty 'prompt'")
        targets = rec.get("targets")
        if not isinstance(targets, dict):
            raise DataError(f"{line}: missing 'targets' (a mapping stage -> text)")
        missing = [n for n in names if not isinstance(targets.get(n), str)]
        if missing:
            raise DataError(
                f"{line}: no target text for stage(s) {missing} of stack {cfg.name!r}; distill with this stack"
            )
        usable.append(rec)
    if not usable:
        raise DataError(f"{where}: no usable (kept) records to train on")
    return usable


def build_examples(cfg: StackConfig, engine, records: Sequence[dict], max_length: int) -> list[StageData]:
    """One StageData per stage; examples longer than max_length are skipped and counted, never cut."""
    plain = cfg.without_adapters()
    stack = Stack(plain, engine)
    eos = engine.tokenizer.eos_token_id
    if eos is None:
        eos = engine.eos_ids[0]
    data = {s.name: StageData(s.name) for s in cfg.stages if not s.is_retrieval}  # a retriever has nothing to train
    for rec in records:
        targets = rec["targets"]
        for index, stage in enumerate(cfg.stages):
            if stage.is_retrieval:
                continue
            prompt = stack.stage_input(index, rec["prompt"], {s.name: targets[s.name] for s in cfg.stages[:index]})
            example = Example(
                rec["id"], tuple(engine.encode(prompt)), tuple(engine.encode(targets[stage.name].strip())) + (eos,)
            )
            if example.length > max_length:
                data[stage.name].skipped_too_long += 1
            else:
                data[stage.name].examples.append(example)
    return list(data.values())


def usable_pairs(rows: Sequence[dict], where: str) -> list[dict]:
    """Rows with a non-empty string id, context and continuation; anything else is a data error naming the line."""
    usable = []
    for n, row in enumerate(rows, 1):
        line = f"{where}: line {row.get('_line', n)}"
        for key in ("id", "context", "continuation"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{line}: missing or empty {key!r} (a pair row is {{id, context, continuation}})")
        usable.append(row)
    if not usable:
        raise DataError(f"{where}: no (context, continuation) pairs to train on")
    return usable


def pair_examples(stage: str, engine, rows: Sequence[dict], max_length: int) -> StageData:
    """The loss falls on the continuation's tokens only, split from the context as `engine.score` splits them, so
    the adapter learns the very log-probabilities it is scored by; pairs longer than max_length are counted, never cut."""
    data = StageData(stage)
    for row in rows:
        context, continuation = engine.encode_pair(row["context"], row["continuation"])
        example = Example(row["id"], tuple(context), tuple(continuation))
        if example.length > max_length:
            data.skipped_too_long += 1
        else:
            data.examples.append(example)
    return data
