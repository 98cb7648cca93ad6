"""What an experiment still has to do, read from the spec and from disk.

One job per training step, per evaluated system (`runs/<system>/`) and per selection candidate
(`select/<system>/`). Nothing records progress besides the outputs themselves: an evaluation is done when its run
folder holds a row for every planned item and a summary of all of them; a training step when its marker
(`train/<step>.done.json`, written after the library call returned) matches the step as specified now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fslm.errors import DataError
from fslm.evaluate.store import folder_busy, read_rows
from fslm.experiment.fingerprint import fingerprint, recorded
from fslm.experiment.spec import ExperimentSpec
from fslm.experiment.variants import TRAIN, stack_step, train_dir
from fslm.tasks.splits import HELDOUT, select_items

EVAL, SELECT, TRAIN_JOB = "eval", "select", "train"
RUNS, SELECT_DIR, COMPARE, LOGS = "runs", "select", "compare", "logs"
DONE, PARTIAL, TODO, RUNNING, STALE = "done", "partial", "not started", "running", "stale"


@dataclass
class Job:
    kind: str  # train | eval | select
    name: str  # the training step or system
    folder: Path
    deps: list[str] = field(default_factory=list)  # keys of the jobs that must be done first
    split: str | None = None  # eval/select: the `split` argument of evaluate
    limit: int | None = None
    total: int = 0  # eval/select: items planned
    done: int = 0  # eval/select: of those, rows on disk
    state: str = TODO
    summary: dict | None = None  # eval/select: summary.json once done
    fingerprint: dict | None = None  # eval/select: what its rows must have been computed with (fingerprint.py)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def progress(self) -> str:
        if self.kind == TRAIN_JOB:
            return self.state
        if self.state == DONE:
            return f"done {self.total}/{self.total}"
        if self.state == TODO:
            return f"not started 0/{self.total}"
        if self.state == STALE:
            return f"stale {self.done}/{self.total} (spec or adapters changed; rerun moves it aside)"
        return f"{self.state} {self.done}/{self.total}"


@dataclass
class Plan:
    spec: ExperimentSpec
    jobs: dict[str, Job]
    items: dict[tuple[str | None, int | None], dict[str, list[str]]]  # (split, limit) -> task -> item ids

    def todo(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.state != DONE]

    def runs(self, kind: str = EVAL) -> dict[str, Job]:
        return {job.name: job for job in self.jobs.values() if job.kind == kind}


def marker_path(spec: ExperimentSpec, step: str) -> Path:
    return spec.out_dir / TRAIN / f"{step}.done.json"


def step_fingerprint(spec: ExperimentSpec, step: str) -> dict:
    """What a step's marker must match: the step as specified, what it takes from elsewhere in the spec, and the
    fingerprints of the steps it reads (an edited upstream step makes this one rerun, even after an interrupted run)."""
    entry = spec.training[step]
    data = {"step": step, entry.kind: entry.body.model_dump(mode="json")}
    if entry.kind == "pairs" and entry.body.tasks is None:  # drawn from the evaluation's tasks
        data["pairs"]["tasks"] = spec.evaluation.task_names
    deps = spec.step_deps(step)
    if deps:
        data["reads"] = {dep: step_fingerprint(spec, dep) for dep in deps}
    return data


def _without_nulls(value: object) -> object:
    """`value` with every null dropped from its mappings: an unset field (None) never tells two steps apart, so a
    field added to a step kind later, unset, leaves the markers of older runs valid."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def marker_matches(stored: object, now: dict) -> bool:
    """Whether a marker's fingerprint is `now`, nulls aside (`_without_nulls`). A marker may also list the kinds the
    step is not (as null) and lack `reads`: it matches on the step itself (its upstream steps are still checked to be
    done, see _train_job)."""
    if not isinstance(stored, dict):
        return False
    stored, now = _without_nulls(stored), _without_nulls(now)
    if "reads" not in stored:
        now = {k: v for k, v in now.items() if k != "reads"}
    return stored == now


def _train_deps(spec: ExperimentSpec, step: str) -> list[str]:
    return [f"{TRAIN_JOB}:{dep}" for dep in spec.step_deps(step)]


def _train_job(spec: ExperimentSpec, step: str, jobs_state: dict[str, str]) -> Job:
    job = Job(TRAIN_JOB, step, train_dir(spec, step), deps=_train_deps(spec, step))
    marker = marker_path(spec, step)
    if marker.is_file():
        try:
            done = marker_matches(
                json.loads(marker.read_text(encoding="utf-8")).get("fingerprint"), step_fingerprint(spec, step)
            )
        except json.JSONDecodeError:
            done = False
        job.state = DONE if done else PARTIAL  # a marker of an edited step: rerun (the library decides what to redo)
        if done and any(jobs_state.get(d) != DONE for d in job.deps):
            job.state = PARTIAL  # a step it reads is to be (re)run first
    elif job.folder.exists():
        job.state = PARTIAL
    return job


def _step_order(spec: ExperimentSpec) -> list[str]:
    """The training steps, each after the steps it reads (the spec has no loops: spec.py checks)."""
    order: list[str] = []

    def visit(step: str) -> None:
        if step not in order:
            for dep in spec.step_deps(step):
                visit(dep)
            order.append(step)

    for step in spec.training:
        visit(step)
    return order


def planned_items(task_names: list[str], split: str | None, limit: int | None) -> dict[str, list[str]]:
    """task -> ids of the items `evaluate` will score, in its order (every data error before any work)."""
    return {task: [item.id for item in select_items(task, limit, split)] for task in task_names}


def read_eval_state(job: Job, ids: dict[str, list[str]]) -> None:
    """Fill a job's done/total/state/summary from its run folder."""
    wanted = {i for task_ids in ids.values() for i in task_ids}
    job.total = len(wanted)
    try:
        rows = read_rows(job.folder)
    except DataError:
        rows = {}  # the evaluation itself reports the malformed line when it resumes
    job.done = len(wanted & rows.keys())
    summary_path = job.folder / "summary.json"
    if summary_path.is_file():
        try:
            job.summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            job.summary = None
    old = recorded(job.folder)
    if folder_busy(job.folder):
        job.state = RUNNING
    elif old is not None and job.fingerprint is not None and old != job.fingerprint:
        job.state = STALE
        job.summary = None
    elif job.done == job.total and job.summary is not None and job.summary.get("n_items") == job.total:
        job.state = DONE
    else:
        job.state = PARTIAL if job.done else TODO
        job.summary = None


def has_metrics(summary: dict | None, names: list[str] | None) -> bool:
    """Whether a summary holds every wanted text metric for each of its generation tasks."""
    from fslm.tasks import get_task

    tasks = (summary or {}).get("tasks", {})
    return all(
        set(names) <= set(entry.get("metrics") or {})
        for task, entry in tasks.items()
        if names and get_task(task).kind == "generate"
    )


def build_plan(spec: ExperimentSpec) -> Plan:
    """Every job of the experiment with its state on disk, dependencies first."""
    jobs: dict[str, Job] = {}
    for step in _step_order(spec):
        job = _train_job(spec, step, {key: j.state for key, j in jobs.items()})
        jobs[job.key] = job
    tasks = spec.evaluation.task_names
    items: dict[tuple[str | None, int | None], dict[str, list[str]]] = {}
    passes = [(EVAL, RUNS, [n for n, s in spec.systems.items() if s.test], spec.test_split(), spec.evaluation.limit)]
    if spec.selection is not None:
        passes.append((SELECT, SELECT_DIR, spec.selection.systems, HELDOUT, spec.selection.limit))
    for kind, folder, names, split, limit in passes:
        if (split, limit) not in items:
            items[(split, limit)] = planned_items(tasks, split, limit)
        for name in names:
            step = stack_step(spec, name)
            job = Job(
                kind,
                name,
                spec.out_dir / folder / name,
                deps=[f"{TRAIN_JOB}:{step}"] if step else [],
                split=split,
                limit=limit,
                fingerprint=fingerprint(spec, name, split, spec.fewshot(name) if kind == EVAL else 0),
            )
            read_eval_state(job, items[(split, limit)])
            if job.state == DONE and not has_metrics(job.summary, spec.evaluation.metrics):
                job.state, job.summary = PARTIAL, None  # a rerun rebuilds its summary with them (rows are kept)
            if job.state == DONE and any(jobs[d].state != DONE for d in job.deps):
                job.state, job.summary = PARTIAL, None  # its training step is to be (re)run first
            jobs[job.key] = job
    return Plan(spec, jobs, items)
