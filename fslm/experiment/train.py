"""Training steps of an experiment, each one library call: distill, synth, curate, finetune, finetune_pairs and
choice_kd (which resume on their own), corpus, index and pairs (rebuilt in seconds, written atomically).

`train_payload` (parent) resolves a step's paths into a JSON job; `run_training` (worker process) runs it and then
writes `train/<step>.done.json`, so a step killed halfway is resumed by the library on the next run, and a finished
one is skipped without loading a model.
"""

from __future__ import annotations

from pathlib import Path

from fslm.experiment.plan import marker_path, step_fingerprint
from fslm.experiment.spec import ExperimentSpec
from fslm.experiment.steps import (
    ChoiceKdStep,
    CorpusStep,
    CurateStep,
    DistillStep,
    FinetuneStep,
    IndexStep,
    PairsStep,
    ScoringPairsStep,
    SynthStep,
)
from fslm.experiment.variants import relative_yaml, stack_ref_path, train_dir
from fslm.io import write_json

DISTILLED, CORPUS, INDEX, PAIRS = "distilled.jsonl", "corpus.jsonl", "index", "pairs.jsonl"
CURATED, SYNTH = "curated.jsonl", "synth.jsonl"
SCORES_PLOT = "scores.png"  # a curate step's score histogram (kept and dropped records)
RECORDS = {"distill": DISTILLED, "curate": CURATED, "synth": SYNTH}  # the records file of each step that writes one
SCORES_FILE = "kd_teacher_scores.jsonl"  # fslm.finetune.choice_kd.SCORES_FILE (that module imports torch)


def distilled_path(spec: ExperimentSpec, step: str) -> Path:
    return train_dir(spec, step) / DISTILLED


def _step_file(spec: ExperimentSpec, ref: str, name: str) -> str:
    """A step's output file when `ref` names a step of this spec, else `ref` as a path relative to the spec."""
    return str(train_dir(spec, ref) / name if ref in spec.training else spec.resolve(ref))


def _records(spec: ExperimentSpec, ref: str) -> str:
    """The records file `ref` names: a distill, curate or synth step's output, or a path relative to the spec."""
    return _step_file(spec, ref, RECORDS[spec.training[ref].kind] if ref in spec.training else "")


def _model(spec: ExperimentSpec, ref: str | None) -> str | None:
    """A model reference, made absolute when it is a local model folder or GGUF file next to the spec."""
    return str(spec.resolve(ref)) if ref is not None and spec.resolve(ref).exists() else ref


def train_payload(spec: ExperimentSpec, step: str) -> dict:
    """The worker's job for training step `step`: its kind, arguments with absolute paths, and its marker."""
    entry = spec.training[step]
    body = entry.body
    args = body.model_dump(mode="json")
    if getattr(body, "stack", None) is not None:
        args["stack"] = str(stack_ref_path(spec, body.stack))
    if isinstance(body, CorpusStep):
        args["alpaca"] = str(spec.resolve(body.alpaca)) if body.alpaca else None
        args["out"] = str(train_dir(spec, step) / CORPUS)
    elif isinstance(body, IndexStep):
        args["corpus"] = _step_file(spec, body.corpus, CORPUS)
        args["out"] = str(train_dir(spec, step))
    elif isinstance(body, ScoringPairsStep):
        args["tasks"] = body.tasks if body.tasks is not None else spec.evaluation.task_names
        args["out"] = str(train_dir(spec, step) / PAIRS)
    elif isinstance(body, DistillStep):
        args["data"] = _records(spec, body.data) if body.data else None
        args["teacher"] = _model(spec, body.teacher)
        args["out"] = str(distilled_path(spec, step))
    elif isinstance(body, CurateStep):
        args["data"] = _records(spec, body.data)
        args["labels"] = str(spec.resolve(body.labels)) if body.labels else None
        args["judge"] = _model(spec, body.judge)
        args["model"] = _model(spec, body.model)
        args["out"] = str(train_dir(spec, step) / CURATED)
    elif isinstance(body, SynthStep):
        args["seeds"] = str(spec.resolve(body.seeds)) if body.seeds else None
        args["teacher"] = _model(spec, body.teacher)
        args["out"] = str(train_dir(spec, step) / SYNTH)
    else:
        args["out"] = str(train_dir(spec, step))
        if isinstance(body, FinetuneStep):
            args["data"] = _records(spec, body.data)
        elif isinstance(body, PairsStep):
            args["pairs"] = _step_file(spec, body.pairs, PAIRS)
        elif isinstance(body, ChoiceKdStep) and body.teacher_scores is not None:
            args["teacher_scores"] = _step_file(spec, body.teacher_scores, SCORES_FILE)
    return {
        "kind": "train",
        "step": step,
        "type": entry.kind,
        "args": args,
        "marker": str(marker_path(spec, step)),
        "fingerprint": step_fingerprint(spec, step),
        "body": body.model_dump(mode="json"),
    }


def _options(raw: dict):
    from fslm.finetune import TrainOptions

    values = dict(raw)
    if isinstance(values.get("targets"), list):
        values["targets"] = tuple(values["targets"])
    return TrainOptions(**values)


def run_training(payload: dict, progress=None) -> dict:
    """Run one training step in this process (the worker); returns the library's report as a dict."""
    args, kind = payload["args"], payload["type"]

    def steps(stage: str, step: int, total: int, loss: float) -> None:
        if progress:
            progress(f"{stage}: step {step}/{total} loss {loss:.4f}")

    if kind == "distill":
        from fslm.config import load_stack_config
        from fslm.distill import DistillOptions, distill
        from fslm.teachers import make_teacher

        cfg = load_stack_config(args["stack"])
        Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
        options = DistillOptions(limit=args["limit"], batch_size=args["batch_size"], hints=args["hints"])
        dtype = _dtype(args.get("teacher_dtype") or cfg.dtype)
        report = distill(
            cfg,
            args["data"],
            args["out"],
            teacher=lambda: make_teacher(args["teacher"], default_ref=cfg.base_model, dtype=dtype),
            options=options,
            progress=(lambda done, total: progress(f"distill {done}/{total}")) if progress else None,
        )
    elif kind == "curate":
        from fslm.distill.curate import DEFAULT_SCORER, curate

        Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
        step = CurateStep.model_validate(payload["body"])
        report = curate(
            args["data"],
            args["out"],
            model=args["model"] or DEFAULT_SCORER,
            options=step.options(args["labels"], args["judge"]),
            plot=None if step.by == "random" else Path(args["out"]).parent / SCORES_PLOT,
            progress=(lambda done, total: progress(f"curate {done}/{total}")) if progress else None,
            judge_progress=(lambda done, total: progress(f"judge {done}/{total}")) if progress else None,
        )
    elif kind == "synth":
        report = _synth(args, SynthStep.model_validate(payload["body"]), progress)
    elif kind == "finetune":
        from fslm.finetune import finetune

        report = finetune(
            args["stack"], args["data"], args["out"], _options(args["options"]), stages=args["stages"], progress=steps
        )
    elif kind == "finetune_pairs":
        from fslm.finetune import finetune_pairs

        report = finetune_pairs(
            args["stack"], args["stage"], args["pairs"], args["out"], _options(args["options"]), progress=steps
        )
    elif kind == "choice_kd":
        from fslm.finetune import finetune_choice_kd

        options = _options({**args["options"], "kd_level": "choice"})
        own = Path(args["out"]) / SCORES_FILE
        if args["teacher_scores"] and options.distilling and not own.exists():  # a copy: no two writers of one file
            from fslm.io import read_text, write_atomic

            own.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(own, read_text(Path(args["teacher_scores"])))
        extra = {"questions": args["questions"]} if args["questions"] is not None else {}
        report = finetune_choice_kd(
            args["stack"], args["stage"], args["out"], options, tasks=args["tasks"], progress=steps, **extra
        )
    elif kind == "corpus":
        from fslm.retrieve.corpus import write_corpus

        stats = write_corpus(
            args["out"],
            args["sources"],
            alpaca_path=args["alpaca"],
            heldout_keep=args["heldout_keep"],
            eval_tail=args["eval_tail"],
        )
        report = _Report({"out": args["out"], "sources": {k: v.to_dict() for k, v in stats.items()}})
    elif kind == "index":
        report = _Report(build_index(args["corpus"], Path(args["out"]), args["stack"]))
    else:
        from fslm.finetune.pairs import write_scoring_pairs

        report = write_scoring_pairs(
            args["stack"],
            args["out"],
            args["records"],
            args["tasks"],
            seed=args["seed"],
            heldout_keep=args["heldout_keep"],
            eval_reserve=args["eval_reserve"],
        )
    result = report.to_dict()
    write_json(Path(payload["marker"]), {"fingerprint": payload["fingerprint"], "report": result})
    return result


def _dtype(dtype: str) -> str:
    """A teacher's dtype; auto: bfloat16 on CPUs with native bf16 (emulated bf16 is slower than float32)."""
    if dtype != "auto":
        return dtype
    from fslm.cpu import bf16_is_fast

    return "bfloat16" if bf16_is_fast() else "float32"


def _synth(args: dict, step: SynthStep, progress):
    """Grow the step's synth.jsonl to `n` records; a run that stalls short of them fails the step (no marker)."""
    from fslm.distill.synth import synth
    from fslm.errors import DataError
    from fslm.teachers import make_teacher

    Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
    report = synth(
        args["out"],
        teacher=lambda: make_teacher(args["teacher"], backend=step.engine, dtype=_dtype(step.teacher_dtype)),
        seeds=args["seeds"],
        options=step.options(),
        progress=(lambda done, total: progress(f"synth {done}/{total}")) if progress else None,
    )
    if report.stalled:
        raise DataError(
            f"{args['out']}: synth stalled at {report.already_done + report.written} of {step.n} records "
            f"({step.max_stalled_rounds} rounds in a row kept nothing); raise max_stalled_rounds (the file resumes) "
            "or use another teacher"
        )
    return report


class _Report(dict):
    def to_dict(self) -> dict:
        return dict(self)


def build_index(corpus: str, out: Path, stack: str | None) -> dict:
    """The BM25 index of `corpus` in out/index/; with `stack`, that stack with every retrieve stage reading it written
    to out/stack.yaml (adapter paths kept pointing where the template's do)."""
    from fslm.config import parse_stack_config
    from fslm.errors import ConfigError
    from fslm.io import load_yaml, read_text, write_atomic
    from fslm.retrieve import index_passages

    retriever = index_passages(corpus, out / INDEX)
    result: dict = {"corpus": corpus, "index": str(out / INDEX), "passages": len(retriever.passages)}
    if stack is not None:
        template = Path(stack)
        data = load_yaml(read_text(template, error=ConfigError), str(template), error=ConfigError)
        stages = data.get("stages") if isinstance(data, dict) else None
        readers = [s for s in stages or [] if isinstance(s, dict) and isinstance(s.get("retrieve"), dict)]
        if not readers:
            raise ConfigError(f"{template}: no stage retrieves; an index step's stack needs a retrieve stage")
        for raw in readers:
            raw["retrieve"]["index"] = str((out / INDEX).resolve())
        cfg = parse_stack_config(data, str(template), template.resolve())
        write_atomic(out / "stack.yaml", relative_yaml(cfg, out / "stack.yaml"))
        result["stack"] = str(out / "stack.yaml")
    return result
