"""Distillation: a teacher writes every stage's target text for each instruction, batch by batch, resumably.

Answer-hinted mode (records with a gold output): the teacher sees the instruction AND the gold output and writes each
intermediate stage's text to fit it; the final stage's target is the gold output itself. Records without an output
are distilled unhinted: the teacher plays each stage, the final one included.

With `reuse` + `redo`, only the named stages are asked again (say, after a role's teacher prompt changed); the
others keep an earlier file's targets, so a role can be redesigned without paying for the whole distillation.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from fslm.config import (
    PLACEHOLDER,
    PROMPT,
    StackConfig,
    StageConfig,
    check_chain,
    free_form_chain,
    load_default_stack_config,
    load_stack_config,
)
from fslm.distill.filters import check_target, trim_to_sentences
from fslm.distill.reuse import load_reuse
from fslm.distill.store import DistillStore, read_distilled
from fslm.errors import ConfigError, DataError
from fslm.io import replace_surrogates
from fslm.stack import generation_params, load_retrievers, retrieve_records, stage_messages
from fslm.tasks.instructions import Instruction, load_instructions
from fslm.teachers import Teacher, make_teacher

ANSWER = "answer"
HINT_SUFFIX = "\n\nThe correct final answer is: {}\nWrite only this step, consistent with that answer; do not write the answer itself."


@dataclass
class DistillOptions:
    limit: int | None = None  # use the first N (unique) records of the data file
    batch_size: int = 16  # records per teacher batch; also the fsync unit
    hints: bool = True  # show the teacher the gold output when a record has one
    no_leak: Sequence[str] | None = None  # stages that must not contain the gold answer; None: see leak_stages()
    length_slack: float = (
        1.0  # a target may use up to slack * the stage's max_new_tokens (unless max_target_tokens is set)
    )
    trim: bool = True  # a too-long target keeps its whole leading sentences that fit (see trim_to_sentences)
    # Redistill some stages only (a new teacher prompt for one role): targets of the other stages come from `reuse`,
    # an earlier distilled file, for the records it kept; records it lacks or did not keep are distilled in full.
    reuse: str | Path | None = None
    redo: Sequence[str] = ()


@dataclass
class DistillReport:
    out: str
    teacher: str
    records: int  # unique records selected from the data file
    duplicates: int  # duplicate records in the data file (skipped)
    already_done: int  # found in --out from an earlier run
    written: int  # written by this run
    kept: int  # usable records in the whole file
    filtered: dict[str, int] = field(default_factory=dict)  # "<stage>:<reason>" -> records, whole file
    repaired_bytes: int = 0  # partial last line cut off (a killed earlier run)
    seconds: float = 0.0
    retries: int = 0  # transient teacher failures that were retried
    resubmitted: int = 0  # with Ray: batches sent to a fresh worker after theirs died

    def to_dict(self) -> dict:
        return asdict(self)


def shows_gold(stage: StageConfig) -> bool:
    """Whether the teacher sees the gold answer when it writes this stage (hinted mode)."""
    return stage.teacher_prompt is None or "{answer}" in stage.teacher_prompt


def leak_stages(cfg: StackConfig, no_leak: Sequence[str] | None) -> set[str]:
    """Default: every intermediate stage before the one that drafts the answer, if its teacher was shown the gold.
    A teacher that never saw the gold and still states it (a fact it knows) is recalling, not leaking."""
    names = [s.name for s in cfg.stages]
    if no_leak is None:
        return {s.name for s in cfg.stages[:-2] if shows_gold(s) and not s.is_retrieval}
    unknown = [n for n in no_leak if n not in names]
    if unknown:
        raise ConfigError(f"--no-leak: unknown stage(s) {unknown}; stages of {cfg.name!r}: {names}")
    return set(no_leak)


def distill_identity(cfg: StackConfig, options: DistillOptions) -> dict:
    """What shapes a distilled record besides its instruction: each stage's config (prompts, limits; not its adapter)
    and the options that change targets or filters. Kept beside the output so a resume cannot mix setups."""

    def digest(stage: StageConfig) -> str:
        unset = (
            {"retrieve"} if stage.retrieve is None else set()
        )  # model stages keep the digests they had before retrieval
        text = json.dumps(stage.model_dump(mode="json", exclude={"adapter", *unset}), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    indexes = {s.name: _index_digest(cfg, s) for s in cfg.stages if s.is_retrieval}
    return {
        "student": cfg.base_model,  # its tokenizer measures target lengths
        "stages": {s.name: digest(s) for s in cfg.stages},
        **({"indexes": indexes} if indexes else {}),  # a rebuilt index changes the passages later stages read
        "options": {
            "hints": options.hints,
            "no_leak": sorted(options.no_leak) if options.no_leak is not None else None,
            "length_slack": options.length_slack,
            "trim": options.trim,
            "redo": sorted(options.redo),
        },
    }


def _index_digest(cfg: StackConfig, stage: StageConfig) -> str:
    from fslm.retrieve.index import read_manifest

    return read_manifest(cfg.index_path(stage))["passages_sha256"]  # type: ignore[arg-type]


def check_teacher_prompts(cfg: StackConfig) -> None:
    """Teacher prompts may name only {prompt}, {answer} and EARLIER stages (the teacher's texts for them)."""
    where = cfg.source_path or "<config>"
    for i, stage in enumerate(cfg.stages):
        allowed = {PROMPT, ANSWER} | {s.name for s in cfg.stages[:i]}
        for name in PLACEHOLDER.findall(stage.teacher_prompt or ""):
            if name not in allowed:
                raise ConfigError(
                    f"{where}: stages.{i}.teacher_prompt: placeholder {{{name}}} is not one of {sorted(allowed)}"
                )


def _fill(template: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def teacher_messages(
    cfg: StackConfig, index: int, prompt: str, targets: dict[str, str], gold: str | None
) -> list[dict[str, str]]:
    """What the teacher is asked for stage `index`; `gold` is None in unhinted mode."""
    stage = cfg.stages[index]
    student = stage_messages(cfg, index, prompt, targets)
    values = {PROMPT: prompt, **targets}
    uses_answer = stage.teacher_prompt is not None and "{answer}" in stage.teacher_prompt
    if stage.teacher_prompt is not None and (gold is not None or not uses_answer):
        return [
            {"role": "system", "content": stage.instruction},
            {"role": "user", "content": _fill(stage.teacher_prompt, {**values, ANSWER: gold or ""})},
        ]
    if gold is None:
        return student  # no hint: the teacher plays the stage exactly as the student will
    return [student[0], {"role": "user", "content": student[1]["content"] + HINT_SUFFIX.format(gold)}]


def _token_counter(cfg: StackConfig, teacher: Teacher) -> Callable[[str], int]:
    """Target lengths are measured with the STUDENT's tokenizer: its budget is what the limit is about."""
    engine = getattr(teacher, "engine", None)
    if engine is not None and engine.model_ref == cfg.base_model:
        return engine.count_tokens
    from fslm.models import load_tokenizer

    tok = load_tokenizer(cfg.base_model)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


class _Distiller:
    def __init__(
        self,
        cfg: StackConfig,
        teacher: Teacher,
        options: DistillOptions,
        reused: dict[str, dict[str, str]] | None = None,
    ):
        self.cfg, self.teacher, self.options = cfg, teacher, options
        self.no_leak = leak_stages(cfg, options.no_leak)
        self.count_tokens = _token_counter(cfg, teacher)
        self.reused = reused or {}
        self.retrievers = load_retrievers(cfg)

    def __call__(self, items: Sequence[Instruction]) -> list[dict]:  # a Ray worker's entry point
        return self.batch(items)

    def _budget(self, stage: StageConfig) -> int:
        if stage.max_target_tokens is not None:
            return stage.max_target_tokens
        return int(stage.generation.max_new_tokens * self.options.length_slack)

    def batch(self, items: Sequence[Instruction]) -> list[dict]:
        cfg, final = self.cfg, self.cfg.stages[-1]
        golds = [it.gold if self.options.hints else None for it in items]
        records = [self._new_record(it, gold) for it, gold in zip(items, golds)]
        for rec in records:
            if rec["id"] in self.reused:
                rec["targets"].update(self.reused[rec["id"]])
                rec["reused"] = sorted(self.reused[rec["id"]])
        for rec, gold in zip(records, golds):
            if gold is not None:  # a gold answer the answer stage could never produce is useless: check it first
                reasons = check_target(
                    gold, max_tokens=self._budget(final), count_tokens=self.count_tokens, stop=final.generation.stop
                )
                rec["filtered"] = [f"{final.name}:{r}" for r in reasons]
        for index, stage in enumerate(cfg.stages):
            last = index == len(cfg.stages) - 1
            alive = [k for k, rec in enumerate(records) if not rec["filtered"]]
            if stage.is_retrieval:
                self._retrieve(
                    stage, [k for k in alive if stage.name not in records[k].get("reused", ())], items, records
                )
                continue
            asked = [
                k
                for k in alive
                if not (last and golds[k] is not None) and stage.name not in records[k].get("reused", ())
            ]
            for k in alive:
                if last and golds[k] is not None:
                    records[k]["targets"][stage.name], records[k]["seconds"][stage.name] = golds[k], 0.0
            if not asked:
                continue
            requests = [teacher_messages(cfg, index, items[k].prompt, records[k]["targets"], golds[k]) for k in asked]
            replies = self.teacher.generate(requests, generation_params(stage))
            for k, reply in zip(asked, replies, strict=True):
                rec = records[k]
                text, finish = replace_surrogates(reply.text), reply.finish_reason  # a JSON reply may spell "\ud800"
                if self.options.trim and (finish == "length" or self.count_tokens(text) > self._budget(stage)):
                    trimmed = trim_to_sentences(text, self._budget(stage), self.count_tokens)
                    if trimmed is not None:
                        text, finish = trimmed, "stop"
                        rec.setdefault("trimmed", []).append(stage.name)
                rec["targets"][stage.name] = text
                rec["seconds"][stage.name] = round(reply.seconds, 4)
                leak_answer = golds[k] if stage.name in self.no_leak else None
                reasons = check_target(
                    text,
                    finish_reason=finish,
                    max_tokens=self._budget(stage),
                    count_tokens=self.count_tokens,
                    stop=stage.generation.stop,
                    answer=leak_answer,
                    prompt=items[k].prompt,
                )
                rec["filtered"] = [f"{stage.name}:{r}" for r in reasons]
        for rec in records:
            rec["kept"] = not rec["filtered"]
            rec["seconds"]["total"] = round(sum(rec["seconds"].values()), 4)
        return records

    def _retrieve(self, stage: StageConfig, todo: list[int], items: Sequence[Instruction], records: list[dict]) -> None:
        """A retrieve stage's target is what it will read at run time (no teacher), never the record's own text."""
        made = retrieve_records(
            self.cfg,
            stage,
            self.retrievers[stage.name],
            [(items[k].prompt, records[k]["targets"]) for k in todo],
            avoid=[items[k].prompt for k in todo],
        )
        for k, record in zip(todo, made, strict=True):
            records[k]["targets"][stage.name] = record.output
            records[k]["seconds"][stage.name] = record.seconds

    def _new_record(self, item: Instruction, gold: str | None) -> dict:
        return {
            "id": item.id,
            "index": item.index,
            "prompt": item.prompt,
            "gold": item.gold,
            "hinted": gold is not None,
            "targets": {},
            "kept": False,
            "filtered": [],
            "teacher": self.teacher.id,
            "stack": self.cfg.name,
            "seconds": {},
        }


def _teacher_factory(cfg: StackConfig, teacher: Teacher | Callable[[], Teacher] | None) -> Callable[[], Teacher]:
    if teacher is None:
        return partial(make_teacher, default_ref=cfg.base_model, dtype=cfg.dtype)
    if hasattr(teacher, "generate"):
        raise ConfigError(
            "with ray, pass the teacher as a factory each worker calls once (e.g. functools.partial(make_teacher, "
            "'MODEL')), not a loaded teacher"
        )
    return teacher


def _remote_distiller(
    cfg: StackConfig, make: Callable[[], Teacher], options: DistillOptions, reused: dict
) -> _Distiller:
    return _Distiller(cfg, make(), options, reused)


def _teacher_id(worker: _Distiller) -> str:
    return worker.teacher.id


def _teacher_retries(worker: _Distiller) -> int:
    return getattr(worker.teacher, "retries", 0)


def summarize(path: str | Path) -> tuple[int, dict[str, int]]:
    """(kept records, filter counts by '<stage>:<reason>') over a whole distilled file."""
    counts: Counter[str] = Counter()
    kept = 0
    for rec in read_distilled(path):
        kept += bool(rec.get("kept"))
        counts.update(rec.get("filtered") or [])
    return kept, dict(sorted(counts.items()))


def distill(
    stack: str | Path | StackConfig | None,
    data: str | Path | None,
    out: str | Path,
    *,
    teacher: Teacher | Callable[[], Teacher] | None = None,
    options: DistillOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    ray: str | None = None,
    ray_actors: int | None = None,
) -> DistillReport:
    """Python twin of `fslm distill`. `progress(done, total)` is called after every fsynced batch.

    `teacher` may be a factory: it is only called once the data validated and there is work left. With `ray` (a Ray
    head's HOST:PORT, or "auto"), batches go to `ray_actors` actors (default: one per cluster CPU) that each call the
    factory once (it must pickle: `functools.partial(make_teacher, ...)`); this process alone writes `out`.
    """
    options = options or DistillOptions()
    if options.batch_size < 1:
        raise ConfigError("batch size must be >= 1")
    cfg = (
        stack
        if isinstance(stack, StackConfig)
        else load_default_stack_config()
        if stack is None
        else load_stack_config(stack)
    )
    cfg = free_form_chain(cfg)  # distillation data are instructions: the stages that answer prompts without options
    check_chain(cfg, "distillation")
    check_teacher_prompts(cfg)
    leak_stages(cfg, options.no_leak)
    items, duplicates = load_instructions(data, options.limit)
    reused = load_reuse(cfg, options.reuse, options.redo)
    t0 = time.perf_counter()
    with DistillStore(out, distill_identity(cfg, options)) as store, ExitStack() as workers:
        todo = [it for it in items if it.id not in store.done]
        report = DistillReport(
            str(out), "", len(items), duplicates, len(items) - len(todo), 0, 0, repaired_bytes=store.repaired_bytes
        )
        if progress:
            progress(0, len(todo))
        if todo:
            batches = [todo[start : start + options.batch_size] for start in range(0, len(todo), options.batch_size)]
            if ray is None:
                if teacher is None:
                    teacher = make_teacher(default_ref=cfg.base_model, dtype=cfg.dtype)
                elif not hasattr(teacher, "generate"):
                    teacher = teacher()
                teacher_id, worker = teacher.id, _Distiller(cfg, teacher, options, reused)
                results: Iterable[list[dict]] = (worker.batch(batch) for batch in batches)
            else:
                from fslm.scale.ray import RayPool, connect

                connect(ray)
                pool = workers.enter_context(
                    RayPool(
                        partial(_remote_distiller, cfg, _teacher_factory(cfg, teacher), options, reused), ray_actors
                    )
                )
                teacher_id, results = pool.ask(_teacher_id), pool.map(batches)
            others = sorted(store.teachers - {teacher_id})
            if others:
                raise DataError(
                    f"{out}: its records were written by {', '.join(others)}, not {teacher_id}; resume with the "
                    f"same teacher, or write to a new --out"
                )
            report.teacher = teacher_id
            for records in results:
                report.written += store.append(records)
                if progress:
                    progress(report.written, len(todo))
            if ray is None:
                report.retries = getattr(teacher, "retries", 0)
            else:
                report.retries, report.resubmitted = sum(pool.ask_all(_teacher_retries)), pool.resubmitted
    report.kept, report.filtered = summarize(out) if Path(out).stat().st_size else (0, {})
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
