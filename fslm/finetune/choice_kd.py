"""Choice-level distillation: on multiple-choice questions, the student's distribution over the options (softmax of
each option's log-likelihood after its context) is trained toward the teacher's. Only option scores cross between
the models, so the teacher may have any tokenizer, and any engine (llama.cpp too): it is asked through `Engine.score`.

    loss = mix * T^2 * KL(softmax(teacher_ll / T) || softmax(student_ll / T)) + (1 - mix) * CE(softmax(student_ll), gold)

Questions come from the tasks' train/dev splits only, minus any question text of an evaluation split and the head of
the held-out pools (`pairs.pick_questions(dev_only=True)`), rendered exactly as `--answer-format raw-adapter` scores
them (`pairs.build_choice_rows`), so the adapter is fit to that format, as `finetune_pairs` is. The teacher scores
every question once; its scores are appended to `<out>/kd_teacher_scores.jsonl` chunk by chunk, so a killed run
keeps what was scored and a rerun scores only the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fslm.config import StackConfig, load_default_stack_config, load_stack_config
from fslm.engine import Engine, load_engine, require_transformers
from fslm.errors import ConfigError, DataError
from fslm.finetune.examples import Example
from fslm.finetune.kd import Teacher, kd_term, load_teacher
from fslm.finetune.options import CHOICE_QUESTIONS, TrainOptions
from fslm.finetune.pairs import build_choice_rows, pick_questions
from fslm.finetune.run import FinetuneReport, _pad_id, _train_adapter, _write_trained
from fslm.finetune.trainer import batch_tensors, target_logits
from fslm.io import append_jsonl, iter_jsonl, read_text, write_atomic
from fslm.tasks import Item

SCORES_FILE = "kd_teacher_scores.jsonl"
SCORE_CHUNK = 16  # questions per teacher call and per appended block of the cache


@dataclass(frozen=True)
class ChoiceExample:
    """One question: each option as (context, continuation) tokens, the gold index, the teacher's option scores."""

    record_id: str
    options: tuple[Example, ...]
    gold: int
    teacher: tuple[float, ...]  # the teacher's log-likelihood of each option

    @property
    def length(self) -> int:  # what bucketing sorts by: the tokens the question's forward pass holds
        return sum(option.length for option in self.options)

    @property
    def units(self) -> int:  # the choice loss is a mean over questions
        return 1

    @property
    def rows(self) -> tuple[Example, ...]:
        return self.options


@dataclass
class ChoiceData:
    stage: str
    examples: list[ChoiceExample] = field(default_factory=list)
    skipped_too_long: int = 0

    def fingerprint(self) -> str:
        """The exact tokens and teacher scores: a resumed run refuses checkpoints made from other data."""
        digest = hashlib.sha1()
        for ex in self.examples:
            options = [[o.prompt_ids, o.target_ids] for o in ex.options]
            digest.update(json.dumps([ex.record_id, options, ex.gold, [round(t, 4) for t in ex.teacher]]).encode())
        return digest.hexdigest()[:16]


def _row_digest(row: dict) -> str:
    return hashlib.sha1(json.dumps([row["contexts"], row["continuations"]]).encode()).hexdigest()[:16]


def teacher_scores(teacher: Teacher, rows: Sequence[dict], path: Path) -> dict[str, list[float]]:
    """Each row's option log-likelihoods under the teacher, by id: read from `path` where a line has them for this
    teacher and this exact text, the rest scored in chunks and appended (a kill loses at most the chunk under way)."""
    done = _read_scores(path, teacher.id)
    digests = {row["id"]: _row_digest(row) for row in rows}
    todo = [row for row in rows if done.get(row["id"], {}).get("digest") != digests[row["id"]]]
    for start in range(0, len(todo), SCORE_CHUNK):
        chunk = todo[start : start + SCORE_CHUNK]
        contexts = [c for row in chunk for c in row["contexts"]]
        continuations = [c for row in chunk for c in row["continuations"]]
        scores = iter(teacher.engine.score(contexts, continuations, adapter=teacher.adapter))
        lines = []
        for row in chunk:
            logprobs = [float(next(scores).logprob) for _ in row["continuations"]]
            lines.append({"id": row["id"], "teacher": teacher.id, "digest": digests[row["id"]], "logprobs": logprobs})
        append_jsonl(path, lines)
        done.update({line["id"]: line for line in lines})
    return {row["id"]: done[row["id"]]["logprobs"] for row in rows}


def _read_scores(path: Path, teacher_id: str) -> dict[str, dict]:
    """The cache's complete lines (a line torn by a kill is cut off first); lines of another teacher are refused."""
    if not path.is_file():
        return {}
    text = read_text(path)
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        write_atomic(path, text)
    done = {}
    for number, row in iter_jsonl(path, text=text):
        where = f"{path}: line {number}"
        if not isinstance(row, dict) or not isinstance(row.get("logprobs"), list):
            raise DataError(f"{where}: expected {{id, teacher, digest, logprobs}}; delete the file to rescore")
        if row.get("teacher") != teacher_id:
            raise DataError(f"{where}: scored by {row.get('teacher')!r}, not {teacher_id!r}; use a new --out")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row["logprobs"]):
            raise DataError(f"{where}: a teacher score is not a finite number; delete the file to rescore")
        done[str(row.get("id"))] = row
    return done


def choice_examples(stage: str, engine, rows: Sequence[dict], scores: dict[str, list[float]], max_length: int):
    """Options split into tokens as `engine.score` splits them; a question with any option over `max_length` is
    skipped (counted), so every kept question compares all of its options."""
    data = ChoiceData(stage)
    for row in rows:
        options = []
        for context, continuation in zip(row["contexts"], row["continuations"], strict=True):
            ctx, cont = engine.encode_pair(context, continuation)
            options.append(Example(row["id"], tuple(ctx), tuple(cont)))
        if len(scores[row["id"]]) != len(options):
            raise DataError(f"{row['id']}: {len(scores[row['id']])} teacher scores for {len(options)} options")
        if max(option.length for option in options) > max_length:
            data.skipped_too_long += 1
            continue
        data.examples.append(ChoiceExample(row["id"], tuple(options), row["gold"], tuple(scores[row["id"]])))
    return data


def option_loglikelihoods(peft_model, flat: Sequence[Example], pad_id: int, options: TrainOptions, bf16: bool):
    """Each option's summed continuation log-probability (what `engine.score` reports), differentiable."""
    ids, mask, rows, cols, labels = batch_tensors(flat, pad_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = target_logits(peft_model, ids, mask, rows, cols, options.target_logits_only)
    token_lp = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    return torch.zeros(len(flat)).index_add(0, rows, token_lp), int(mask.sum()), len(labels)


def choice_kd_loss(
    peft_model, batch: Sequence[ChoiceExample], pad_id: int, options: TrainOptions, bf16: bool
) -> tuple[torch.Tensor, int, int, dict[str, float]]:
    """The mixed loss of a batch of questions, averaged over questions; parts {"hard", "kd"} for the log."""
    flat = [option for ex in batch for option in ex.options]
    student, tokens, targets = option_loglikelihoods(peft_model, flat, pad_id, options, bf16)
    hard, kd, own, start = [], [], [], 0
    for ex in batch:
        scores = student[start : start + len(ex.options)]
        start += len(ex.options)
        log_p = F.log_softmax(scores, dim=-1)
        hard.append(-log_p[ex.gold])
        kd.append(kd_term(scores, torch.tensor(ex.teacher), options.kd_temperature))
        own.append(-log_p[int(scores.detach().argmax())])  # the student's own answer, as a hard label
    hard_t, kd_t = torch.stack(hard).mean(), torch.stack(kd).mean()
    if not options.distilling:  # the baseline: the gold labels alone, on the same questions and objective
        return hard_t, tokens, targets, {"hard": float(hard_t.detach())}
    parts = {"hard": float(hard_t.detach()), "kd": float(kd_t.detach())}
    if options.kd_confidence:  # Burns et al.'s auxiliary confidence loss: trust the strong student where it is sure
        own_t = torch.stack(own).mean()
        kd_t = (1 - options.kd_confidence) * kd_t + options.kd_confidence * own_t
        parts["own"] = float(own_t.detach())
    loss = options.kd_mix * kd_t + (1 - options.kd_mix) * hard_t
    return loss, tokens, targets, parts


def finetune_choice_kd(
    stack: str | Path | StackConfig | None,
    stage: str,
    out: str | Path,
    options: TrainOptions,
    *,
    tasks: str | Sequence[str] | None = None,
    questions: int = CHOICE_QUESTIONS,
    items: Sequence[Item] | None = None,
    engine=None,
    teacher: Engine | None = None,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> FinetuneReport:
    """Train `stage`'s adapter so its option distribution on `questions` choice questions of `tasks` (train/dev
    splits; or the given `items`) matches the teacher's (`options.kd`, or the loaded `teacher` engine). Without a
    teacher (`options.kd` None) the same questions train on their gold options alone: the hard-label baseline at equal
    data and compute. Resumes like `finetune`: teacher scores from the cache, training from the last checkpoint."""
    options.validate()
    if options.kd_level != "choice":
        raise ConfigError("choice-level training needs --kd-level choice")
    cfg = (
        stack
        if isinstance(stack, StackConfig)
        else load_default_stack_config()
        if stack is None
        else load_stack_config(stack)
    )
    names = [s.name for s in cfg.stages]
    if stage not in names or cfg.stages[names.index(stage)].is_retrieval:
        raise ConfigError(f"stage {stage!r}: not a model stage of {cfg.name!r} (stages: {names})")
    chosen = list(items) if items is not None else pick_questions(questions, tasks, seed=options.seed, dev_only=True)
    chosen = [item for item in chosen if len(item.continuations) > 1]
    if not chosen:
        raise ConfigError("no multiple-choice question to distil on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = build_choice_rows(cfg, chosen)
    engine = require_transformers(engine or load_engine(cfg.base_model, dtype="float32"), "LoRA fine-tuning")
    t0 = time.perf_counter()
    if options.distilling:
        loaded = load_teacher(options, teacher)
        teacher_id, scores = loaded.id, teacher_scores(loaded, rows, out / SCORES_FILE)
    else:  # no teacher: its scores are never read (the loss is the hard term alone)
        teacher_id, scores = None, {row["id"]: [0.0] * len(row["continuations"]) for row in rows}
    data = choice_examples(stage, engine, rows, scores, options.max_length)
    pad_id = _pad_id(engine)
    report = FinetuneReport(str(out), str(out / "stack.yaml"), records=len(rows))
    log = {
        "stack": cfg.name,
        "base_model": cfg.base_model,
        "kind": "choice-kd",
        "teacher": teacher_id,
        "tasks": sorted({item.task for item in chosen}),
        "options": asdict(options),
        "stages": {},
    }
    _train_adapter(
        data,
        engine,
        engine.base_model,
        cfg,
        names.index(stage),
        out,
        options,
        pad_id,
        log,
        report,
        False,
        progress,
        lambda model, batch, bf16: choice_kd_loss(model, batch, pad_id, options, bf16),
    )
    _write_trained(cfg, out, [stage], log, report, t0)
    return report


__all__ = ["ChoiceData", "ChoiceExample", "choice_examples", "choice_kd_loss", "finetune_choice_kd", "teacher_scores"]
