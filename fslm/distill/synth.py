"""Self-instruct (Wang et al., 2023): a teacher grows an instruction set from a few human-written seed tasks.

Each round asks the teacher for new instructions, showing it a sample of seed instructions and of instructions it
wrote earlier; every new instruction must pass the paper's filters (length, no task a text model cannot do such as
"draw a graph", no leading punctuation or non-ASCII) and have ROUGE-L < 0.7 against EVERY instruction in the pool
(seeds and everything kept so far). The teacher then writes an input (or none) and an output for each one.

Records are appended to an Alpaca-format JSONL one round at a time (fsynced, the DistillStore pattern). A round's
sampling depends only on `seed`, the round number and the pool, which the file itself holds, so with a deterministic
teacher a killed run resumed gives the very file an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fslm.distill.store import DistillStore
from fslm.errors import ConfigError, DataError
from fslm.evaluate.metrics import rouge_l_tokens, rouge_tokens
from fslm.extras import require
from fslm.generation import GenerationParams
from fslm.io import iter_jsonl, read_bytes, replace_surrogates
from fslm.settings import get_settings
from fslm.tasks.instructions import NO_INPUT
from fslm.teachers import Teacher

SEED_TASKS = "alpaca/seed_tasks.jsonl"
# Tasks a text-only model cannot do (self-instruct's and Stanford Alpaca's list).
BANNED = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
          "go to", "video", "audio", "music", "flowchart", "diagram")  # fmt: skip
_BANNED = re.compile(r"\b(" + "|".join(re.escape(w) for w in BANNED) + r")\b", re.IGNORECASE)
_NUMBERED = re.compile(r"^\s*(?:task\s*)?\d+\s*[.):]\s*(.+?)\s*$", re.IGNORECASE)
_INSTANCE = re.compile(r"(?:\binput:\s*(?P<input>.*?)\s*)?\boutput:\s*(?P<output>.*?)\s*$", re.IGNORECASE | re.DOTALL)
PROMPT_VERSION = 1  # bump when the teacher prompts change: a resumed file must not mix two prompt versions


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    input: str
    output: str


@dataclass
class SynthOptions:
    n: int = 100  # records the output file should hold
    seed: int = 0  # sampling seed: the same seed, teacher and seed tasks give the same file
    seed_examples: int = 6  # in-context seed instructions per request (the paper: 6 human-written...)
    generated_examples: int = 2  # ...and 2 model-written ones, once there are any
    per_request: int = 8  # new instructions asked for per request
    requests_per_round: int = 4  # requests sent to the teacher together (an HTTP teacher runs them concurrently)
    similarity: float = 0.7  # keep an instruction only if its ROUGE-L to every pooled instruction is below this
    min_words: int = 3
    max_words: int = 150
    temperature: float = 0.7  # the paper's sampling settings
    top_p: float = 0.5
    max_new_tokens: int = 512  # per teacher reply (a list of instructions, or one input + output)
    max_stalled_rounds: int = 20  # give up after this many rounds in a row keep nothing


@dataclass
class SynthReport:
    out: str
    teacher: str
    target: int  # --n
    already_done: int
    written: int = 0
    rounds: int = 0  # rounds run by this call
    proposed: int = 0  # instructions the teacher proposed in those rounds
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> proposals dropped
    stalled: bool = False  # stopped early: max_stalled_rounds rounds kept nothing
    repaired_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class SynthStore(DistillStore):
    noun = "synthesized"
    verb = "fslm synth"
    keep_records = True

    def mismatch(self, stored: dict) -> str | None:
        """Records made with another teacher, seed, seed file or option would break the file's determinism."""
        assert self.identity is not None
        was, now = _flat(stored), _flat(self.identity)
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if not changed:
            return None
        shown = "; ".join(f"{k}: file has {was.get(k)!r}, this run has {now.get(k)!r}" for k in changed)
        return (
            f"{self.path}: its records were made with a different setup ({shown}); rerun with those, or use a new --out"
        )


def _flat(identity: dict) -> dict:
    options = identity.get("options") if isinstance(identity.get("options"), dict) else {}
    return {**{k: v for k, v in identity.items() if k != "options"}, **{k: v for k, v in options.items()}}


def default_seed_path() -> Path:
    return get_settings().data_dir / SEED_TASKS


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """Self-instruct's seed format: one JSON object per line with `instruction` and `instances` [{input, output}]."""
    path = Path(path) if path is not None else default_seed_path()
    if not path.is_file():
        raise DataError(f"{path}: seed tasks file not found (JSONL of {{instruction, instances: [{{input, output}}]}})")
    seeds = []
    for line, obj in iter_jsonl(path, bad_line="{path}: line {line}: malformed JSON: {problem}"):
        where = f"{path}: line {line}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with instruction and instances")
        instruction = obj.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{where}: field 'instruction' must be a non-empty string")
        instances = obj.get("instances")
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise DataError(f"{where}: field 'instances' must be a non-empty list of {{input, output}} objects")
        first = instances[0]
        for name in ("input", "output"):
            if not isinstance(first.get(name, ""), str):
                raise DataError(f"{where}: field 'instances[0].{name}' must be a string")
        seeds.append(SeedTask(instruction.strip(), first.get("input", "").strip(), first.get("output", "").strip()))
    if not seeds:
        raise DataError(f"{path}: no seed tasks in this file")
    return seeds


def instruction_problem(text: str, options: SynthOptions) -> str | None:
    """Why a proposed instruction is dropped before the similarity check (None: it passes)."""
    words = len(text.split())
    if words < options.min_words:
        return "too_short"
    if words > options.max_words:
        return "too_long"
    if _BANNED.search(text):
        return "banned_word"
    if not text[0].isascii():
        return "non_ascii_start"
    if not text[0].isalnum():
        return "starts_with_punctuation"
    return None


def parse_instructions(reply: str) -> list[str]:
    """The numbered lines of a reply ("9. ...", "Task 9: ..."); a reply with no numbered line gives its lines."""
    lines = [ln for ln in reply.split("\n") if ln.strip()]
    numbered = [m.group(1) for ln in lines if (m := _NUMBERED.match(ln))]
    return [t.strip() for t in (numbered or lines) if t.strip()]


def parse_instance(reply: str) -> tuple[str, str] | None:
    """(input, output) of an "Input: ...\\nOutput: ..." reply; a reply with neither label is the output alone."""
    m = _INSTANCE.search(reply)
    if m is None:
        if re.search(r"\b(input|output):", reply, re.IGNORECASE):
            return None  # a label the reply started but did not follow through
        return "", reply.strip()
    input_ = (m.group("input") or "").strip()
    return ("" if NO_INPUT.match(input_) else input_), m.group("output").strip()


def instruction_messages(examples: Sequence[str], count: int) -> list[dict[str, str]]:
    listed = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, 1))
    first, last = len(examples) + 1, len(examples) + count
    return [
        {"role": "system", "content": "You write new, diverse tasks for training an AI assistant."},
        {
            "role": "user",
            "content": f"Come up with a series of tasks:\n{listed}\n\nContinue the list with {count} new tasks, "
            f"numbered {first} to {last}, one per line. Each is one instruction a person might give an assistant, "
            "different from the others in topic and wording. Do not answer them.",
        },
    ]


def instance_messages(example: SeedTask, instruction: str) -> list[dict[str, str]]:
    shown = f"Task: {example.instruction}\nInput: {example.input or '<noinput>'}\nOutput: {example.output}"
    return [
        {"role": "system", "content": "You complete tasks for training an AI assistant."},
        {
            "role": "user",
            "content": "Write an input for the task (or <noinput> if it needs none), then the correct output, in "
            f"this form:\n\n{shown}\n\nTask: {instruction}",
        },
    ]


def _identity(teacher: Teacher, seeds_digest: str, options: SynthOptions) -> dict:
    shaping = {k: v for k, v in asdict(options).items() if k not in ("n", "max_stalled_rounds")}
    return {"teacher": teacher.id, "seed_tasks": seeds_digest, "prompt_version": PROMPT_VERSION, "options": shaping}


def check_options(options: SynthOptions) -> None:
    if options.n < 1:
        raise ConfigError(f"--n must be >= 1, got {options.n}")
    if not 0 < options.similarity <= 1:
        raise ConfigError(f"--similarity must be in (0, 1], got {options.similarity}")
    for name in ("seed_examples", "per_request", "requests_per_round", "min_words", "max_stalled_rounds"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if options.generated_examples < 0 or options.max_words < options.min_words:
        raise ConfigError("--generated-examples must be >= 0 and max words >= min words")


class _Round:
    """One round: sample in-context examples, ask for instructions, filter and dedup them, ask for instances."""

    def __init__(self, teacher: Teacher, seeds: list[SeedTask], options: SynthOptions):
        self.teacher, self.seeds, self.options = teacher, seeds, options
        self.pool = [rouge_tokens(s.instruction) for s in seeds]
        self.generated: list[str] = []
        self.rejected: Counter[str] = Counter()
        self.proposed = 0

    def add(self, instruction: str) -> None:
        self.pool.append(rouge_tokens(instruction))
        self.generated.append(instruction)

    def _params(self, number: int, salt: int) -> GenerationParams:
        o = self.options
        seed = int(hashlib.sha256(f"{o.seed}:{number}:{salt}".encode()).hexdigest()[:8], 16)
        return GenerationParams(max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p, seed=seed)

    def _similar(self, tokens: list[str]) -> bool:
        return any(rouge_l_tokens(tokens, other) >= self.options.similarity for other in self.pool)

    def run(self, number: int, room: int) -> list[dict]:
        o = self.options
        rng = random.Random(f"{o.seed}:{number}")
        requests, examples = [], []
        for _ in range(o.requests_per_round):
            shown = [s.instruction for s in rng.sample(self.seeds, min(o.seed_examples, len(self.seeds)))]
            shown += rng.sample(self.generated, min(o.generated_examples, len(self.generated)))
            requests.append(instruction_messages(shown, o.per_request))
            examples.append(rng.choice(self.seeds))
        replies = self.teacher.generate(requests, self._params(number, 0))
        fresh: list[tuple[str, SeedTask]] = []
        pooled = len(self.pool)
        for reply, example in zip(replies, examples, strict=True):
            for text in parse_instructions(replace_surrogates(reply.text))[: o.per_request]:
                self.proposed += 1
                reason = instruction_problem(text, o)
                tokens = rouge_tokens(text)
                if reason is None and self._similar(tokens):
                    reason = "similar"
                if reason is not None:
                    self.rejected[reason] += 1
                    continue
                self.pool.append(tokens)  # later proposals of this round are checked against it too
                fresh.append((text, example))
        del self.pool[pooled:]  # the pool keeps only what lands in the file (a resume rebuilds it from there)
        fresh = fresh[:room]
        if not fresh:
            return []
        answers = self.teacher.generate([instance_messages(ex, t) for t, ex in fresh], self._params(number, 1))
        records = []
        for (text, _), reply in zip(fresh, answers, strict=True):
            parsed = parse_instance(replace_surrogates(reply.text))
            if parsed is None or not parsed[1] or reply.finish_reason == "length":
                self.rejected["bad_instance" if reply.finish_reason != "length" else "instance_too_long"] += 1
                continue
            records.append({"instruction": text, "input": parsed[0], "output": parsed[1], "round": number})
        return records


def synth(
    out: str | Path,
    *,
    teacher: Teacher | Callable[[], Teacher],
    seeds: str | Path | None = None,
    options: SynthOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Python twin of `fslm synth`: grow `out` to `options.n` records. `teacher` may be a factory, called only when
    records are left to write; `progress(done, n)` is called after every fsynced round."""
    options = options or SynthOptions()
    check_options(options)
    require("eval", "fslm synth's ROUGE-L dedup (rouge-score comes with lm-eval)")
    seed_path = Path(seeds) if seeds is not None else default_seed_path()
    tasks = load_seed_tasks(seed_path)
    digest = hashlib.sha256(read_bytes(seed_path)).hexdigest()[:16]
    t0 = time.perf_counter()
    with SynthStore(out) as store:
        report = SynthReport(str(out), "", options.n, len(store.records), repaired_bytes=store.repaired_bytes)
        if progress:
            progress(len(store.records), options.n)
        if len(store.records) < options.n:
            teacher = teacher if hasattr(teacher, "generate") else teacher()  # type: ignore[operator]
            report.teacher = teacher.id  # type: ignore[union-attr]
            store.check_identity(_identity(teacher, digest, options))  # type: ignore[arg-type]
            _grow(store, _Round(teacher, tasks, options), options, report, progress)  # type: ignore[arg-type]
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _grow(store: SynthStore, worker: _Round, options: SynthOptions, report: SynthReport, progress) -> None:
    for record in store.records:
        _check_record(store.path, record)
        worker.add(record["instruction"])
    number = max((r["round"] for r in store.records), default=-1) + 1
    stalled = 0
    while len(store.records) < options.n:
        done = len(store.records)
        made = worker.run(number, options.n - done)
        for i, record in enumerate(made):
            record["id"] = f"synth-{done + i:06d}"
            worker.add(record["instruction"])
        report.written += store.append([{"id": r.pop("id"), **r} for r in made])
        report.rounds += 1
        number += 1
        stalled = 0 if made else stalled + 1
        if progress:
            progress(len(store.records), options.n)
        if stalled >= options.max_stalled_rounds:
            report.stalled = True
            break
    report.proposed, report.rejected = worker.proposed, dict(sorted(worker.rejected.items()))


def _check_record(path: Path, record: dict) -> None:
    if not isinstance(record.get("instruction"), str) or not isinstance(record.get("round"), int):
        raise DataError(
            f"{path}: record {record['id']!r} lacks 'instruction' or 'round'; is this an `fslm synth` file?"
        )
