"""`evaluate`: the Python twin of `fslm eval` — items in, per-item rows and a summary out, resumable."""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from fslm.cpu import cpu_model, current_threads
from fslm.engine import GenerationParams
from fslm.errors import InputError
from fslm.evaluate.metrics import check_available, generation_metrics, parse_metrics
from fslm.evaluate.prompts import PROMPT_VERSION
from fslm.evaluate.report import build_summary, write_outputs
from fslm.evaluate.scoring import generation_verdict, score_choices
from fslm.evaluate.store import RunStore
from fslm.evaluate.systems import ModelSystem, Outcome, Shots, StackSystem, System, load_system
from fslm.extras import require
from fslm.tasks import Item, fewshot_items, get_task
from fslm.tasks.splits import EVAL_RESERVE, FEWSHOT_TAIL, HELDOUT, parse_tasks, select_items, tail_fewshot_pool

# lm-eval's gsm8k generation settings (greedy, stop before the model invents a next question).
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")
GSM8K_MAX_TOKENS = 256
# Other generation tasks (alpaca) stop only at the end of the model's turn; the same `gen_max_tokens` budget (256 by
# default) caps them. A stack's own answer stage keeps its generation settings.
CHAT_STOP = ("</s>", "<|im_end|>")
FEWSHOT_SEED = 1234

Progress = Callable[[dict], None]


@dataclass
class Summary:
    """What `evaluate` returns: summary.json's content plus the rows it was computed from."""

    data: dict
    rows: list[dict] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def system(self) -> str:
        return self.data["system"]

    @property
    def tasks(self) -> dict[str, dict]:
        return self.data["tasks"]

    @property
    def macro_acc(self) -> float:
        return self.data["macro_acc"]

    @property
    def notes(self) -> list[str]:
        return self.data.get("notes", [])

    def to_dict(self) -> dict:
        return self.data


def _shots(task: str, items: list[Item], k: int, split: str | None) -> Shots:
    if k <= 0:
        return {}
    if split == HELDOUT:
        raise InputError(
            "--split heldout reads the dev/train splits few-shot examples come from; evaluate it zero-shot"
        )
    spec = get_task(task)
    if spec.free_text:
        raise InputError(f"{task}: a model is asked it zero-shot through its chat template; use --num-fewshot 0")
    if split is not None and spec.fewshot_split in (split, {"dev": "validation", "validation": "dev"}.get(split)):
        raise InputError(f"{task}: few-shot examples come from split {spec.fewshot_split!r}, the split being evaluated")
    if task == "mmlu":  # lm-eval: the first k dev questions of the item's own subject
        cache: dict[str, list[Item]] = {}
        for item in items:
            subject = item.meta.get("subject", "")
            if subject not in cache:
                cache[subject] = fewshot_items(task, k, subject=subject)
        return {item.id: cache[item.meta.get("subject", "")] for item in items}
    if spec.fewshot_split is None:  # a single-split task: examples from past the evaluation reserve
        pool = tail_fewshot_pool(task)
        ids = {it.id for it in pool}
        clash = [it.id for it in items if it.id in ids]
        if clash:
            raise InputError(
                f"{task}: its few-shot examples are its items {EVAL_RESERVE}..{EVAL_RESERVE + FEWSHOT_TAIL} in "
                f"evaluation order, and {len(clash)} of them would be evaluated too (e.g. {clash[0]!r}); use "
                f"--limit {EVAL_RESERVE} or less, or --num-fewshot 0"
            )
        if k > len(pool):
            raise InputError(f"{task}: asked for {k} few-shot examples; its pool has {len(pool)}")
        shots = random.Random(FEWSHOT_SEED).sample(pool, k)
    else:
        shots = fewshot_items(task, k, seed=FEWSHOT_SEED)
    return {item.id: shots for item in items}


def make_row(item: Item, outcome: Outcome) -> dict:
    """One items.jsonl row. `choice_scores` are raw summed logprobs (null for generation tasks)."""
    row: dict = {"id": item.id, "task": item.task, "prompt": outcome.prompt, "stages": outcome.stages}
    if item.choices:
        assert outcome.choice_scores is not None and outcome.choice_chars is not None
        res = score_choices(item, outcome.choice_scores, outcome.choice_chars)
        row.update(
            choices=list(item.choices),
            choice_scores=outcome.choice_scores,
            choice_tokens=outcome.choice_tokens,
            choice_chars=outcome.choice_chars,
            prediction=res.prediction,
            prediction_norm=res.prediction_norm,
            gold=item.gold,
            correct=res.correct,
            acc=res.acc,
            acc_norm=res.acc_norm,
        )
        if item.gold_set:
            row["gold_set"] = list(item.gold_set)
    else:
        predicted, ok = generation_verdict(item, outcome.generation or "")
        row.update(
            choice_scores=None,
            generation=outcome.generation,
            prediction=predicted,
            gold=item.gold,
            correct=ok,
            acc=float(ok),
            acc_norm=None,
        )
    row.update(
        tokens_in=outcome.tokens_in,
        tokens_out=outcome.tokens_out,
        seconds=outcome.seconds,
        source=item.meta.get("source", ""),
    )
    return row


def _answer(system: System, batch: list[Item], shots: Shots, gen_max_tokens: int) -> list[Outcome]:
    if batch[0].choices:
        return system.answer_choices(batch, shots)
    stop = GSM8K_STOP if batch[0].task == "gsm8k" else CHAT_STOP
    return system.answer_generate(batch, shots, GenerationParams(max_new_tokens=gen_max_tokens, stop=stop))


class _Rows:
    """A batch of items (with their few-shot examples) -> its items.jsonl rows. On a Ray actor `system` is that
    actor's own copy, loaded once from the driver's `load_system` arguments."""

    def __init__(self, system: System, gen_max_tokens: int):
        self.system, self.gen_max_tokens = system, gen_max_tokens

    @classmethod
    def load(cls, load_args: dict, gen_max_tokens: int) -> _Rows:
        return cls(load_system(**load_args), gen_max_tokens)

    def __call__(self, job: tuple[list[Item], Shots]) -> list[dict]:
        batch, shots = job
        outcomes = _answer(self.system, batch, shots, self.gen_max_tokens)
        return [make_row(it, out) for it, out in zip(batch, outcomes, strict=True)]


def _identity(system: System, num_fewshot: int, split: str | None, gen_max_tokens: int) -> dict:
    identity = {
        "system": system.name,
        "num_fewshot": num_fewshot,
        "split": split,
        "prompt_version": PROMPT_VERSION,
        "gen_max_tokens": gen_max_tokens,
    }
    sha = getattr(system, "config_sha256", None)
    # A run made on another engine or in half precision is another system's run (llama.cpp's 4-bit texts and scores,
    # bfloat16's, are their own); fp32 HF runs keep the identity they always had, so their folders still resume.
    kind = str(getattr(system.engine, "dtype", ""))
    engine = (
        {"engine": kind} if kind.startswith("llamacpp") else {"dtype": kind} if kind in ("bfloat16", "float16") else {}
    )
    return identity | ({"stack_config_sha256": sha} if sha else {}) | engine


class _Session:
    """This invocation's costs, written to run.json after every batch (a killed run keeps what it spent)."""

    def __init__(self, store: RunStore, t0: float, cpu0: float, system: System, remote: bool = False):
        self.store, self.t0, self.cpu0, self.items = store, t0, cpu0, 0
        stack = getattr(system, "stack", None)
        self.cache = None if remote else getattr(stack, "cache", None)  # on Ray, the workers' caches count
        self.cache0 = (self.cache.hits, self.cache.misses) if self.cache is not None else (0, 0)
        self.pool = None  # a RayPool doing the batches

    def update(self, n_items: int) -> None:
        self.items += n_items
        fields = {
            "wall_seconds": round(time.perf_counter() - self.t0, 2),
            "cpu_seconds": round(_cpu_seconds() - self.cpu0, 1),  # on a shared machine wall time overstates cost
            "items_evaluated": self.items,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
        if self.pool is not None:
            fields["ray"] = {"actors": self.pool.size, "resubmitted": self.pool.resubmitted}
        if self.cache is not None:  # reused stage outputs: their tokens and seconds are those measured when generated
            fields["stage_cache"] = {
                "path": str(self.cache.path),
                "hits": self.cache.hits - self.cache0[0],
                "misses": self.cache.misses - self.cache0[1],
            }
        self.store.update_session(fields)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def evaluate(
    system: System | str,
    tasks: str | Sequence[str] | None = None,
    limit: int | None = None,
    num_fewshot: int = 0,
    out_dir: str | Path | None = None,
    *,
    split: str | None = None,
    batch_size: int = 32,
    gen_max_tokens: int = GSM8K_MAX_TOKENS,
    progress: Progress | None = None,
    metrics: str | Sequence[str] | None = None,
    ray: str | None = None,
    ray_actors: int | None = None,
) -> Summary:
    """Evaluate a system (or a model reference / stack YAML path) on benchmark tasks.

    Multiple choice: log-likelihood of each choice (acc, acc_norm; mc2 for truthfulqa_mc2); gsm8k: greedy
    generation, exact match of the final number. With `out_dir`, rows are appended per batch and a rerun skips
    the items already done. Returns the summary (also written as summary.json, table.md and chart.png).
    `metrics` (e.g. "em,rougeL,minilm"; fslm.evaluate.metrics) also scores each generation task's outputs against
    its reference text, computed from the rows when the summary is built (a rerun can ask for other metrics).
    `ray` (a Ray head's HOST:PORT, or "auto"): batches go to `ray_actors` actors (default: one per cluster CPU), each
    loading its own copy of the system (one made by `load_system`, or a reference); this process writes the rows.
    """
    require("eval", "evaluation (its chart.png)")
    metric_names = parse_metrics(metrics)
    check_available(metric_names)
    if isinstance(system, (str, Path)):
        ref = str(system)
        system = (
            load_system(stack=ref) if ref == "default" or ref.endswith((".yaml", ".yml")) else load_system(model=ref)
        )
    if num_fewshot < 0:
        raise InputError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if num_fewshot and not getattr(system, "supports_fewshot", False):
        raise InputError("few-shot examples apply to --model systems only; evaluate stacks zero-shot")
    names = parse_tasks(tasks)
    notes: list[str] = []
    plan = {task: select_items(task, limit, split, notes) for task in names}  # every data error before any work
    if metric_names and all(items and items[0].choices for items in plan.values()):
        notes.append(f"--metrics {','.join(metric_names)} scores generation tasks (gsm8k, alpaca); none was evaluated")
    check_no_retrieval_leak(system, plan)
    if ray is not None:
        _check_ray(system, ray)
    shots = {task: _shots(task, items, num_fewshot, split) for task, items in plan.items()}
    with RunStore(
        Path(out_dir) if out_dir is not None else None, _identity(system, num_fewshot, split, gen_max_tokens)
    ) as store:
        return _evaluate_into(
            store,
            system,
            plan,
            shots,
            notes,
            limit=limit,
            num_fewshot=num_fewshot,
            split=split,
            batch_size=batch_size,
            gen_max_tokens=gen_max_tokens,
            progress=progress,
            metrics=metric_names,
            ray=ray,
            ray_actors=ray_actors,
        )


def _check_ray(system: System, address: str) -> None:
    if getattr(system, "load_args", None) is None:
        raise InputError(
            "with ray, give a system made by load_system (or a model reference or stack path): each Ray worker "
            "loads its own copy from the same arguments"
        )
    from fslm.scale.ray import connect

    connect(address)


def check_no_retrieval_leak(system: System, plan: dict[str, list[Item]]) -> None:
    """A stack whose retrieve stage can find the very item it is asked (its id is a passage id) would read the
    answer: refuse before any work, naming the index and an example."""
    retrievers = getattr(getattr(system, "stack", None), "retrievers", {})
    for stage, retriever in retrievers.items():
        ids = {p.id for p in retriever.passages}
        leaked = [it.id for items in plan.values() for it in items if it.id in ids]
        if leaked:
            raise InputError(
                f"{len(leaked)} of the items to evaluate are passages of stage {stage!r}'s retrieval index (e.g. "
                f"{leaked[0]!r}): the stage would read their answers. Evaluate other items (--limit, --split) or rebuild "
                "the corpus without them (`fslm retrieve corpus` leaves out every item `fslm eval` reads by default)"
            )


def _evaluate_into(
    store: RunStore,
    system: System,
    plan: dict[str, list[Item]],
    shots: dict[str, Shots],
    notes: list[str],
    *,
    limit: int | None,
    num_fewshot: int,
    split: str | None,
    batch_size: int,
    gen_max_tokens: int,
    progress: Progress | None,
    metrics: Sequence[str] = (),
    ray: str | None = None,
    ray_actors: int | None = None,
) -> Summary:
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    store.add_session(
        {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_seconds": system.load_seconds,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "threads": current_threads(),
        }
    )
    session = _Session(store, t0, cpu0, system, remote=ray is not None)
    done_before = store.done()
    jobs: list[tuple[list[Item], Shots]] = []
    for task, items in plan.items():
        todo = [it for it in items if it.id not in done_before]
        size = batch_size if items and items[0].choices else max(1, min(batch_size, 16))
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            jobs.append((batch, {it.id: shots[task][it.id] for it in batch if it.id in shots[task]}))
    with ExitStack() as workers:
        if ray is None or not jobs:
            rows_of = _Rows(system, gen_max_tokens)
            answered: Iterator[list[dict]] = (rows_of(job) for job in jobs)
        else:
            from fslm.scale.ray import RayPool

            session.pool = workers.enter_context(
                RayPool(partial(_Rows.load, system.load_args, gen_max_tokens), ray_actors)
            )
            answered = session.pool.map(jobs)
        for task, items in plan.items():
            finished = sum(it.id in done_before for it in items)
            if progress:
                progress({"task": task, "done": finished, "total": len(items), "new": 0})
            while finished < len(items):
                rows = next(answered)
                store.append(rows)
                finished += len(rows)
                session.update(len(rows))
                if progress:
                    scored = [store.rows[it.id]["acc"] for it in items if it.id in store.rows]
                    progress(
                        {
                            "task": task,
                            "done": finished,
                            "total": len(items),
                            "new": len(rows),
                            "acc": sum(scored) / len(scored),
                            "elapsed": time.perf_counter() - t0,
                        }
                    )
    session.update(0)
    planned = {it.id for items in plan.values() for it in items}
    outside = len(set(store.rows) - planned)
    if outside:  # kept (nothing on disk is dropped), but a reader of items.jsonl should know they are not in this run
        notes.append(
            f"{outside} row(s) in {store.folder}/items.jsonl are not among this run's items (an earlier --tasks, "
            "--limit or data version); summary.json leaves them out"
        )
    rows = [store.rows[it.id] for items in plan.values() for it in items]
    values = generation_metrics(plan, rows, metrics) if metrics else None
    data = build_summary(
        system,
        plan,
        rows,
        store.sessions,
        notes=notes,
        limit=limit,
        num_fewshot=num_fewshot,
        split=split,
        metrics=values,
    )
    if store.folder is not None:
        write_outputs(store.folder, data, rows, values)
    return Summary(data, rows, store.folder)


__all__ = [
    "ModelSystem",
    "StackSystem",
    "Summary",
    "evaluate",
    "load_system",
    "make_row",
]
