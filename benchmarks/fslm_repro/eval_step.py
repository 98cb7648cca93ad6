"""Step `eval` and the machinery every evaluating step shares: which systems there are, and how their runs get done.

eval -> <out>/runs/<system>/ (fslm.evaluate; resumes per batch), one folder per system, each evaluated in its own
        process (its peak RSS is its own); `run_jobs` lets two recipe processes share the work without ever writing
        one run folder together.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from recipe import Recipe, read_json, slug

from fslm.config import keep_stages, load_stack_config, without_stage
from fslm.errors import ConfigError
from fslm.evaluate import evaluate, load_system, parse_tasks, select_items
from fslm.evaluate.store import RunFolderBusy, folder_busy, write_atomic, write_json

BUSY_EXIT = 75  # an isolated eval worker found its run folder locked by another process (EX_TEMPFAIL)


UNTRAINED_KINDS = ("base", "promptonly", "model", "format", "retrieval", "retrieval-chat", "model-retrieval")
RAW_TRAINED_LABEL = "retrieved solved questions, corpus with unevaluated test items -> answer adapter trained on raw-scored choice questions"


@dataclass(frozen=True)
class SystemSpec:
    name: str  # run folder name under <out>/runs/
    label: str  # as shown in RESULTS.md
    kind: str  # trained | base | promptonly | model | format | notes | retrieval | retrieval-chat | model-retrieval | scorer | ablation
    stack: Path | None = None
    model: str | None = None
    adapters: bool = True
    base: bool = False
    stage_cache: str | None = None  # a StageCache file shared by the recipe's stacks (see `with_stage_cache`)
    answer_format: str = "stack"  # "raw": the base model scores lm-eval's raw context after the earlier texts;
    # "raw-adapter": the same contexts scored under the final stage's adapter (attempt 5)

    @property
    def needs_training(self) -> bool:
        """Whether it reads anything the finetune step makes; the others (baselines) can run before or beside it."""
        return self.kind not in UNTRAINED_KINDS

    def load(self):
        if self.model is not None:
            return load_system(model=self.model)
        return load_system(
            stack=self.stack,
            adapters=self.adapters,
            base=self.base,
            stage_cache=self.stage_cache,
            answer_format=self.answer_format,
        )


def stage_cache_path(recipe: Recipe) -> Path:
    return recipe.work / "stage_outputs.sqlite"


def stage_cache_copy(recipe: Recipe) -> Path:
    """The cache's text copy, kept with the results: the SQLite file in --work is lost with its machine, and the
    systems that reuse the trained stack's outputs may run in a later session on another one."""
    return recipe.out / "stage_outputs.jsonl"


def sync_stage_cache(recipe: Recipe, log=print) -> None:
    """Level the SQLite cache and its text copy in both directions (entries are immutable: a union is exact)."""
    from fslm.stack_cache import StageCache

    with StageCache(stage_cache_path(recipe)) as cache:
        added, exported = cache.import_jsonl(stage_cache_copy(recipe)), cache.export_jsonl(stage_cache_copy(recipe))
    if added or exported:
        log(f"  stage cache: {added} entries read from {stage_cache_copy(recipe).name}, {exported} written to it")


def with_stage_cache(recipe: Recipe, spec: SystemSpec) -> SystemSpec:
    """Stacks share one stage cache: an ablation or a later attempt reuses every stage output whose input, adapter
    bytes and settings it shares with a system evaluated before it (fslm.stack_cache); model systems have no stages."""
    if spec.model is not None or spec.base:
        return spec
    return replace(spec, stage_cache=str(stage_cache_path(recipe)))


def prompt_stack_dir(recipe: Recipe) -> Path:
    return recipe.out / "prompt_stack"


def write_prompt_stacks(recipe: Recipe) -> None:
    """The stack to train with no adapters, and its answer stage alone: what the untrained baselines run. They have
    their own files (not the trained stack's) so that the baselines can be evaluated before or beside fine-tuning."""
    cfg = recipe.stack_config()
    answer_only = keep_stages(cfg, [cfg.stages[-1].name]).model_copy(update={"name": f"{cfg.name}-answer-only"})
    for name, variant in (("stack.yaml", cfg), ("stack-answer-only.yaml", answer_only)):
        path = prompt_stack_dir(recipe) / name
        if not path.is_file() or path.read_text(encoding="utf-8") != variant.to_yaml():
            write_atomic(path, variant.to_yaml())


def ablations(recipe: Recipe, write: bool = False) -> list[SystemSpec]:
    """Ablation stacks next to the trained stack.yaml (so its relative adapter paths hold): the answer stage alone
    (do the earlier texts help the final scorer at all?), one without each intermediate stage, the two-stage version.
    write: (re)write their YAML files from the trained stack (which must exist); without it, only the specs."""
    trained = recipe.trained_dir / "stack.yaml"
    cfg = (
        load_stack_config(trained) if write else recipe.stack_config()
    )  # same stages and prompts; names and labels agree
    variants = [("answer-only", "answer stage alone (no earlier texts)", keep_stages(cfg, [cfg.stages[-1].name]))]
    for stage in cfg.stages[:-1]:
        variant = without_stage(cfg, stage.name)
        unread = variant.unread_stages()  # left running though nothing reads them: same answers, more tokens
        note = f" ({', '.join(unread)} still runs; no stage reads it)" if unread else ""
        variants.append((f"no-{stage.name}", f"without {stage.name}{note}", variant))
    variants.append(("2stage", f"2 stages ({' -> '.join(recipe.two_stage)})", keep_stages(cfg, recipe.two_stage)))
    specs = []
    for suffix, label, variant in variants:
        path = recipe.trained_dir / f"stack-{suffix}.yaml"
        variant = variant.model_copy(update={"name": f"{cfg.name}-{suffix}"})
        if write and (not path.is_file() or path.read_text(encoding="utf-8") != variant.to_yaml()):
            write_atomic(path, variant.to_yaml())
        specs.append(SystemSpec(f"stack-{suffix}", f"trained stack {label}", "ablation", stack=path))
    return specs


def systems(recipe: Recipe) -> list[SystemSpec]:
    """Every system RESULTS.md reports, in evaluation order. Pure: listing them writes no file (see `ablations`)."""
    trained = recipe.trained_dir / "stack.yaml"
    untrained = prompt_stack_dir(recipe)
    specs = [
        SystemSpec("stack-trained", "trained stack", "trained", stack=trained),
        SystemSpec(
            "base",
            f"base model alone ({recipe.stack_config().base_model})",
            "base",
            stack=untrained / "stack.yaml",
            base=True,
        ),
    ]
    # The baselines issue 5 asks for come before the attempts: a session that stops early leaves a usable comparison.
    specs.append(
        SystemSpec(
            "stack-promptonly", "same stack, no adapters", "promptonly", stack=untrained / "stack.yaml", adapters=False
        )
    )
    specs += [SystemSpec(f"model-{slug(m)}", f"{m} alone", "model", model=m) for m in recipe.big_models]
    variants = ablations(recipe)
    # The base model asked the way the stack's answer stage is asked (chat prompt, options listed, each option's text
    # scored), with no adapter and no earlier texts: separates the prompt format's effect from the stack's.
    specs.append(
        SystemSpec(
            "base-stackformat",
            "base model in the answer stage's format (no adapters, no earlier texts)",
            "format",
            stack=untrained / "stack-answer-only.yaml",
            adapters=False,
        )
    )
    specs.append(variants[0])  # the answer stage alone: seconds per item, like the base model
    # The base model exactly as in `base`, with the trained stack's texts in front: do they help a plain scorer at all,
    # with the chat format and the answer adapter out of the picture? (Paired with `base`; costs only scoring once the
    # stage cache holds the trained stack's texts.)
    specs.append(
        SystemSpec(
            "stack-notes-raw",
            "base model in its own format reading the trained stack's texts",
            "notes",
            stack=trained,
            answer_format="raw",
        )
    )
    if recipe.retrieval:  # attempt 4: the notes are retrieved solved questions (retrieval_step), nothing trained
        import retrieval_step

        specs.append(
            SystemSpec(
                "stack-retrieval-raw",
                "base model in its own format reading retrieved solved questions",
                "retrieval",
                stack=retrieval_step.stack_path(recipe),
                answer_format="raw",
            )
        )
        specs.append(
            SystemSpec(
                "stack-retrieval",
                "retrieved solved questions -> answer stage (no adapters)",
                "retrieval-chat",
                stack=retrieval_step.stack_path(recipe),
                adapters=False,
            )
        )
        specs.append(
            SystemSpec(
                "stack-retrieval-tail-raw",
                "base model in its own format reading retrieved solved questions, corpus with unevaluated test items",
                "retrieval",
                stack=retrieval_step.stack_path(recipe, "tail"),
                answer_format="raw",
            )
        )
        for model in retrieval_step.passage_readers(recipe):  # a larger model reading the same passages as attempt 5
            specs.append(
                SystemSpec(
                    f"model-{slug(model)}-retrieval-tail-raw",
                    f"{model} in its own format reading retrieved solved questions, corpus with unevaluated test items",
                    "model-retrieval",
                    stack=retrieval_step.reader_stack_path(recipe, model),
                    answer_format="raw",
                )
            )
        if recipe.scorer_records:  # attempt 5: the same passages, an answer adapter trained on raw scoring pairs
            import scorer_step

            specs.append(
                SystemSpec(
                    "stack-scorer",
                    RAW_TRAINED_LABEL,
                    "scorer",
                    stack=scorer_step.stack_path(recipe),
                    answer_format="raw-adapter",
                )
            )
    if recipe.neutral:
        specs.append(
            SystemSpec(
                "stack-trained-neutral",
                "trained stack with reasoning notes that pick no answer (unhinted teacher)",
                "trained",
                stack=recipe.out / "trained_stack_neutral" / "stack.yaml",
            )
        )
    if recipe.choice_records:
        specs.append(
            SystemSpec(
                "stack-trained-choice",
                "trained stack with the answer stage retrained on choice-style train questions",
                "trained",
                stack=recipe.out / "trained_stack_choice" / "stack.yaml",
            )
        )
    return specs + variants[1:]


def expected_items(recipe: Recipe) -> int:
    return sum(len(select_items(t, recipe.eval_limit)) for t in parse_tasks(recipe.tasks))


def eval_done(recipe: Recipe) -> bool:
    if not (recipe.trained_dir / "stack.yaml").is_file():
        return False
    expected = expected_items(recipe)
    return all(run_complete(recipe.runs_dir / s.name, expected) for s in systems(recipe))


def _evaluate_here(spec: SystemSpec, tasks, limit: int, folder: str, batch_size: int, split: str | None = None) -> None:
    system = spec.load()
    evaluate(system, tasks, limit, out_dir=folder, batch_size=batch_size, split=split)


def evaluate_system(
    spec: SystemSpec,
    tasks,
    limit: int,
    folder: Path,
    batch_size: int = 32,
    isolate: bool = True,
    split: str | None = None,
) -> None:
    """Evaluate one system. isolate: in a fresh process, so its peak RSS is its own. ru_maxrss never goes down and
    Linux carries it across fork+exec, so the worker is started by a small shell that forks it (`sh -c 'cmd; exit'`
    cannot exec in place): the worker inherits the shell's few MB, not this process's loaded models."""
    if not isolate:
        _evaluate_here(spec, tasks, limit, str(folder), batch_size, split)
        gc.collect()
        return
    import subprocess
    import sys

    args = json.dumps(
        {
            "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()},
            "tasks": tasks,
            "limit": limit,
            "folder": str(folder),
            "batch_size": batch_size,
            "split": split,
        }
    )
    # Its own process group, so that stopping the recipe (Ctrl-C, SIGTERM) stops the worker too instead of leaving it
    # writing beside a restarted recipe.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, str(Path(__file__).resolve()), args],
        start_new_session=True,
    )
    try:
        code = proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    if code == BUSY_EXIT:
        raise RunFolderBusy(f"{folder}: another process is evaluating into it")
    if code != 0:
        raise ConfigError(
            f"evaluating {spec.name} failed in its subprocess (exit code {code}; its error is printed above); "
            f"rerun to resume from {folder}"
        )


def _stop_group(proc, grace: float = 30.0) -> None:
    import os
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class EvalJob:
    """One run folder to complete: a system on `limit` items per task of a split (None: the test items)."""

    spec: SystemSpec
    folder: Path
    limit: int
    expected: int
    split: str | None = None
    after: tuple[Path, ...] = ()  # run folders to finish first: this job reuses their stage outputs (fslm.stack_cache)


def job_done(job: EvalJob) -> bool:
    return run_complete(job.folder, job.expected)


def run_jobs(recipe: Recipe, jobs: list[EvalJob], log=print) -> None:
    """Complete every job, in order. A run folder that another process is writing (the other lane, a second recipe
    command) is left to it and waited for, never written beside it; if that process dies, the folder's lock goes
    with it and the job is taken over here (fslm.evaluate resumes it). A job whose `after` folders are not complete
    waits for them rather than generating the stage outputs they will put in the shared cache. A process left with
    nothing to take warms the cache for a stack run the other holds, from its end (warm_cache.py; recipe.warm_cache)."""
    from warm_cache import warm_from_the_end, warmable

    waiting: set[Path] = set()
    warmed: set[Path] = set()
    sync_stage_cache(recipe, log)
    for job in jobs:
        if job_done(job):
            log(f"  {job.spec.name}: done ({job.expected} items{', ' + job.split if job.split else ''})")
    pending = [j for j in jobs if not job_done(j)]
    listed = {j.folder for j in jobs}
    while pending:
        ready = [j for j in pending if all(run_complete(f, j.expected) for f in j.after if f in listed)]
        free = [j for j in ready if not folder_busy(j.folder)]
        if not free:
            hot = [j for j in ready if recipe.warm_cache and j.folder not in warmed and warmable(j)]
            if hot:
                warmed.add(hot[0].folder)  # once: it stops where the evaluator caught up
                warm_from_the_end(recipe, hot[0], log)
                sync_stage_cache(recipe, log)
                continue
            for job in pending:
                if job.folder not in waiting:
                    waiting.add(job.folder)
                    why = (
                        f"another process is evaluating it ({job.folder})"
                        if job in ready
                        else f"it reuses the stage outputs of {', '.join(f.name for f in job.after)}"
                    )
                    log(f"  {job.spec.name}: {why}; waiting")
            time.sleep(recipe.poll_seconds)
        else:
            job = free[0]
            what = f"{job.limit} {job.split + ' ' if job.split else ''}items per task"
            log(f"  {job.spec.name}: evaluating {what} -> {job.folder}")
            try:
                evaluate_system(
                    with_stage_cache(recipe, job.spec),
                    recipe.tasks,
                    job.limit,
                    job.folder,
                    recipe.eval_batch,
                    recipe.isolate_eval,
                    split=job.split,
                )
            except RunFolderBusy:  # another process took it between the check and the start: wait for it
                continue
            finally:
                sync_stage_cache(recipe, log)
            if not job_done(job):
                raise ConfigError(
                    f"{job.folder}: the evaluation ended without all {job.expected} items in summary.json; "
                    "rerun to resume it"
                )
        pending = [j for j in pending if not job_done(j)]


def run_complete(folder: Path, expected: int) -> bool:
    """The run's summary.json counts every item it should: how a step decides a run is done."""
    summary = read_json(folder / "summary.json")
    return summary is not None and summary.get("n_items") == expected


SCORE_ONLY_FIRST = ("scorer",)  # kinds that generate no stage text (~1 s/item): measured first, so a session that
# stops early still has them; the report keeps the order of `systems`


def texts_to_generate(stack: Path | None, trained: Path) -> int:
    """How many of a stack's text stages ask something the trained stack's run did not: the others' texts are in the
    stage cache once that run is done, so an ablation with none left only scores (~1 s/item instead of ~3). A stage
    asks anew if its settings differ or if it sees a stage that does (its prompt then holds a different text)."""
    if stack is None or not (stack.is_file() and trained.is_file()):
        return 0
    before = {s.name: s for s in load_stack_config(trained).stages[:-1]}
    new: set[str] = set()
    for stage in load_stack_config(stack).stages[:-1]:
        if before.get(stage.name) != stage or new & set(stage.sees):
            new.add(stage.name)
    return len(new)


def eval_jobs(recipe: Recipe) -> list[EvalJob]:
    """The eval step's runs; the stacks that share the trained stack's stage outputs come after it, those with the
    fewest texts of their own to generate first (a session that stops early leaves the most of them). The systems
    the `baselines` step owns come last: alone, that step has run them already; beside a lane (`--lanes 2`), taking
    the one the lane is about to start would leave the lane waiting for it while the trained systems queue up."""
    expected = expected_items(recipe)
    trained = recipe.runs_dir / "stack-trained"
    trained_yaml = recipe.trained_dir / "stack.yaml"
    reuses = lambda s: s.kind in ("notes", "ablation") and s.name != "stack-answer-only"  # noqa: E731

    def order(s):
        return (
            not s.needs_training,
            s.kind not in SCORE_ONLY_FIRST,
            texts_to_generate(s.stack, trained_yaml) if reuses(s) else 0,
        )

    specs = sorted(systems(recipe), key=order)  # stable: otherwise the systems keep their report order
    return [
        EvalJob(s, recipe.runs_dir / s.name, recipe.eval_limit, expected, after=(trained,) if reuses(s) else ())
        for s in specs
    ]


def run_eval(recipe: Recipe, log=print) -> dict:
    if not (recipe.trained_dir / "stack.yaml").is_file():
        raise ConfigError(f"no {recipe.trained_dir / 'stack.yaml'}: run the 'finetune' step first")
    write_prompt_stacks(recipe)
    ablations(recipe, write=True)
    data = system_index(recipe)
    # Written first, so that `--only report` can report the systems finished so far while the rest still run.
    write_json(recipe.out / "systems.json", data)
    run_jobs(recipe, eval_jobs(recipe), log)
    return data


def system_index(recipe: Recipe) -> dict:
    """systems.json's content: every system's label, kind and run folder, and the items each run must hold."""
    index = {
        spec.name: {
            "label": spec.label,
            "kind": spec.kind,
            "run": str((recipe.runs_dir / spec.name).relative_to(recipe.out)),
        }
        for spec in systems(recipe)
    }
    return {
        "systems": index,
        "items_per_system": expected_items(recipe),
        "limit": recipe.eval_limit,
        "tasks": parse_tasks(recipe.tasks),
    }


if __name__ == "__main__":  # the isolated worker of evaluate_system
    import sys

    from fslm.errors import FslmError

    job = json.loads(sys.argv[1])
    spec = SystemSpec(**{**job["spec"], "stack": Path(job["spec"]["stack"]) if job["spec"]["stack"] else None})
    try:
        _evaluate_here(spec, job["tasks"], job["limit"], job["folder"], job["batch_size"], job.get("split"))
    except RunFolderBusy as err:
        print(f"note: {err}", file=sys.stderr)
        sys.exit(BUSY_EXIT)
    except FslmError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
