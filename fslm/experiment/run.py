"""`run_experiment`: the Python twin of `fslm experiment run SPEC.yaml` — plan, run what is missing, report.

Every job runs in its own process (`fslm.experiment.worker`), at most `jobs` at a time, a job only after the jobs
it needs. The library verbs resume, so a rerun after a kill continues where the outputs stop, and a rerun of a
finished experiment starts no process at all (it only refreshes the report).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fslm.collaborate.proxy_params import check_adapter_dirs
from fslm.config import load_stack_config
from fslm.errors import FslmError, InputError
from fslm.experiment.fingerprint import fingerprint, move_aside, record, recorded
from fslm.experiment.plan import (
    DONE,
    EVAL,
    LOGS,
    RUNNING,
    TRAIN_JOB,
    Job,
    Plan,
    build_plan,
    marker_matches,
    marker_path,
    step_fingerprint,
)
from fslm.experiment.spec import ExperimentSpec, load_spec
from fslm.experiment.steps import TRAINERS
from fslm.experiment.train import train_payload
from fslm.experiment.variants import stack_path, stack_step
from fslm.settings import get_settings
from fslm.stack_checks import check_adapters

Log = Callable[[str], None]
STAGE_CACHE = "stage_outputs.sqlite"


class ExperimentError(FslmError):
    """Some jobs failed; the others ran and the report shows what is there. `result` has the details."""

    def __init__(self, message: str, result: ExperimentResult):
        super().__init__(message)
        self.result = result


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    plan: Plan  # the state on disk after this call
    ran: list[str] = field(default_factory=list)  # job keys this call ran
    failed: dict[str, str] = field(default_factory=dict)  # job key -> its last error line
    report: Path | None = None  # RESULTS.md


def model_ref(spec: ExperimentSpec, ref: str) -> str:
    """A model reference as given, or a local path relative to the spec file when one exists there."""
    local = spec.resolve(ref)
    return str(local) if local.exists() else ref


def stage_cache_path(spec: ExperimentSpec) -> Path:
    """The shared stage cache lives with fslm's other caches, not in the results folder (it is a rebuildable SQLite
    file); one per results folder."""
    key = hashlib.sha256(str(spec.out_dir.resolve()).encode()).hexdigest()[:12]
    return get_settings().cache_dir / "experiments" / f"{spec.out_dir.name}-{key}" / STAGE_CACHE


def eval_payload(spec: ExperimentSpec, job: Job) -> dict:
    """The worker's job for evaluating a system (its stack variant is written out first)."""
    system = spec.systems[job.name]
    if system.is_model:
        assert system.model is not None
        described: dict = {"model": model_ref(spec, system.model)}
        if system.dtype is not None:
            described["dtype"] = system.dtype
        if system.expert_delta is not None:
            described |= {"expert_delta": spec.expert_delta(job.name), "delta_alpha": system.delta_alpha}
    else:
        described = {
            "stack": str(stack_path(spec, job.name)),
            "adapters": system.adapters,
            "answer_format": system.answer_format,
            "stage_cache": str(stage_cache_path(spec)) if spec.stage_cache else None,
        }
    return {
        "kind": "eval",
        "system": described,
        "tasks": spec.evaluation.task_names,
        "limit": job.limit,
        "split": job.split,
        "num_fewshot": spec.fewshot(job.name) if job.kind == EVAL else 0,
        "gen_max_tokens": spec.evaluation.gen_max_tokens,
        "metrics": spec.evaluation.metrics,
        "batch_size": spec.evaluation.batch_size,
        "out_dir": str(job.folder),
    }


def preflight(spec: ExperimentSpec, jobs: list[Job]) -> None:
    """Stack files, variants and adapters of the jobs to run, checked before any process starts; a stack that a
    training step of this run will write is checked when that step is done."""
    for job in jobs:
        delta = None if job.kind == TRAIN_JOB else spec.expert_delta(job.name)
        if delta is not None:
            try:
                check_adapter_dirs(delta)
            except FslmError as err:
                raise FslmError(f"systems.{job.name}.expert_delta: {err}") from None
        if job.kind == TRAIN_JOB or spec.systems[job.name].is_model or stack_step(spec, job.name):
            continue
        cfg = load_stack_config(stack_path(spec, job.name))
        try:
            check_adapters(cfg)
        except FslmError as err:
            raise FslmError(f"systems.{job.name}: {err}") from None


def log_path(spec: ExperimentSpec, job: Job) -> Path:
    return spec.out_dir / LOGS / f"{job.kind}-{job.name}.log"


def _last_error(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:400]


class _Workers:
    """The live worker processes, so an interrupted runner can stop them instead of leaving them running."""

    def __init__(self, isolate: bool = True) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.isolate = isolate

    def run(self, payload: dict, log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} {payload['kind']} (pid {os.getpid()})\n")
            fh.flush()
            if not self.isolate:
                from fslm.experiment.worker import run_inline

                return run_inline(payload, fh)
            cmd = [sys.executable, "-m", "fslm.experiment.worker", json.dumps({**payload, "parent": os.getpid()})]
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.procs.add(proc)
            try:
                return proc.wait()
            finally:
                self.procs.discard(proc)

    def stop(self) -> None:
        for proc in list(self.procs):
            proc.terminate()
        for proc in list(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _prepare_folder(spec: ExperimentSpec, job: Job, log: Log) -> None:
    """Record what this run's rows are computed with, moving a run computed with something else aside first. Done at
    launch, after the training steps it needs: their adapters are what it runs."""
    fp = fingerprint(spec, job.name, job.split, spec.fewshot(job.name) if job.kind == EVAL else 0)
    old = recorded(job.folder)
    if fp is not None and old is not None and old != fp:
        log(f"{job.key}: {job.folder} was computed with another definition; moved to {move_aside(job.folder)}")
    if fp is not None:
        record(job.folder, fp)


def _prepare_training(spec: ExperimentSpec, job: Job, log: Log) -> None:
    """A trainer whose marker says it was trained from another definition (its options, or what a step it reads
    wrote) is moved aside whole: the finetune verbs refuse to resume an adapter under other data or options. Data
    steps keep their folders, since their verbs resume across edits (a larger limit adds records; another top
    only re-selects)."""
    marker = marker_path(spec, job.name)
    if spec.training[job.name].kind not in TRAINERS or not marker.is_file() or not job.folder.exists():
        return
    try:
        stored = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
    except json.JSONDecodeError:
        stored = None
    if not marker_matches(stored, step_fingerprint(spec, job.name)):
        log(f"{job.key}: {job.folder} was trained from another definition; moved to {move_aside(job.folder)}")


def execute(
    spec: ExperimentSpec, plan: Plan, jobs: int, log: Log, isolate: bool = True
) -> tuple[list[str], dict[str, str]]:
    """Run the plan's unfinished jobs, `jobs` at a time, each after its dependencies; returns (ran, failed)."""
    pending = {job.key: job for job in plan.todo()}
    failed: dict[str, str] = {}
    for key, job in list(pending.items()):
        if job.state == RUNNING:  # another runner (or an orphaned worker) writes it; do not wait for it here
            failed[key] = f"{job.folder} is being written by another process; rerun when it has finished"
            del pending[key]
    ran: list[str] = []
    workers = _Workers(isolate)
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while pending or running:
                for key, job in list(pending.items()):
                    if len(running) >= jobs:
                        break
                    blocked = [d for d in job.deps if d in failed]
                    if blocked:
                        failed[key] = f"not run: {', '.join(blocked)} failed"
                        del pending[key]
                        continue
                    if any(d in pending or d in {j.key for j in running.values()} for d in job.deps):
                        continue
                    del pending[key]
                    try:
                        payload = train_payload(spec, job.name) if job.kind == TRAIN_JOB else eval_payload(spec, job)
                    except FslmError as err:
                        failed[key] = f"error: {err}"
                        log(f"{key}: failed: {err}")
                        continue
                    if job.kind != TRAIN_JOB:
                        _prepare_folder(spec, job, log)
                    else:
                        _prepare_training(spec, job, log)
                    log(f"{key}: started ({job.progress}) → {log_path(spec, job)}")
                    running[pool.submit(workers.run, payload, log_path(spec, job))] = job
                if not running:  # nothing could start: every pending job waits on one that will not run
                    failed.update({key: "not run: its dependencies did not finish" for key in pending})
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    code = future.result()
                    ran.append(job.key)
                    if code == 0:
                        log(f"{job.key}: done")
                    else:
                        failed[job.key] = _last_error(log_path(spec, job))
                        log(f"{job.key}: failed (exit {code}): {failed[job.key]}")
        except BaseException:
            pending.clear()
            workers.stop()
            raise
    return ran, failed


def run_experiment(
    spec_path: str | Path,
    *,
    jobs: int = 1,
    status: bool = False,
    log: Log | None = None,
    overrides: Mapping[str, object] | None = None,
    isolate: bool = True,
) -> ExperimentResult:
    """Run what the experiment in `spec_path` still needs, then write RESULTS.md, results.json and pareto.png.

        status=True only reads the state on disk (`result.plan`) and runs nothing. `overrides`: dotted spec keys set
        before validation (another scale: {"scale": "pilot"} or {"evaluation.limit": 40}). isolate=False runs every job
    in this process, one at a time (no process start per job: tests, debuggers; peak RSS is then shared). Raises `ExperimentError`
        (after writing the report of what is done) when a job failed."""
    from fslm.experiment.report import write_report

    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if not isolate and jobs > 1:
        raise InputError("jobs run side by side only in their own processes: isolate=False needs jobs=1")
    log = log or (lambda message: None)
    spec = load_spec(spec_path, overrides)
    plan = build_plan(spec)
    if status:
        return ExperimentResult(spec, plan)
    preflight(spec, plan.todo())
    ran, failed = execute(spec, plan, jobs, log, isolate)
    result = ExperimentResult(spec, build_plan(spec), ran, failed)
    result.report = write_report(spec, result.plan)
    log(f"report: {result.report}")
    if failed:
        lines = "\n".join(f"  {key}: {message}" for key, message in failed.items())
        raise ExperimentError(
            f"{len(failed)} job(s) did not finish (logs in {spec.out_dir / LOGS}):\n{lines}\n"
            "fix the cause and rerun: finished work is kept",
            result,
        )
    return result


__all__ = ["DONE", "ExperimentError", "ExperimentResult", "run_experiment"]
