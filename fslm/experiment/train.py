"""Training steps of an experiment, run by the library verbs that already resume: distill, finetune, finetune_pairs.

`train_payload` (parent) resolves a step's paths into a JSON job; `run_training` (worker process) runs it and then
writes `train/<step>.done.json`, so a step killed halfway is resumed by the library on the next run, and a finished
one is skipped without loading a model.
"""

from __future__ import annotations

from pathlib import Path

from fslm.evaluate.store import write_json
from fslm.experiment.plan import marker_path, step_fingerprint
from fslm.experiment.spec import ExperimentSpec
from fslm.experiment.steps import DistillStep, FinetuneStep
from fslm.experiment.variants import stack_ref_path, train_dir

DISTILLED = "distilled.jsonl"


def distilled_path(spec: ExperimentSpec, step: str) -> Path:
    return train_dir(spec, step) / DISTILLED


def train_payload(spec: ExperimentSpec, step: str) -> dict:
    """The worker's job for training step `step`: its kind, arguments with absolute paths, and its marker."""
    entry = spec.training[step]
    body = entry.body
    args = body.model_dump(mode="json")
    args["stack"] = str(stack_ref_path(spec, body.stack))
    if isinstance(body, DistillStep):
        args["data"] = str(spec.resolve(body.data)) if body.data else None
        if body.teacher is not None and spec.resolve(body.teacher).exists():  # a local model folder or GGUF file
            args["teacher"] = str(spec.resolve(body.teacher))
        args["out"] = str(distilled_path(spec, step))
    else:
        args["out"] = str(train_dir(spec, step))
        if isinstance(body, FinetuneStep):
            data = body.data
            args["data"] = str(distilled_path(spec, data) if data in spec.training else spec.resolve(data))
        else:
            args["pairs"] = str(spec.resolve(body.pairs))
    return {
        "kind": "train",
        "step": step,
        "type": entry.kind,
        "args": args,
        "marker": str(marker_path(spec, step)),
        "fingerprint": step_fingerprint(spec, step),
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
        report = distill(
            cfg,
            args["data"],
            args["out"],
            teacher=lambda: make_teacher(args["teacher"], default_ref=cfg.base_model, dtype=cfg.dtype),
            options=options,
            progress=(lambda done, total: progress(f"distill {done}/{total}")) if progress else None,
        )
    elif kind == "finetune":
        from fslm.finetune import finetune

        report = finetune(
            args["stack"], args["data"], args["out"], _options(args["options"]), stages=args["stages"], progress=steps
        )
    else:
        from fslm.finetune import finetune_pairs

        report = finetune_pairs(
            args["stack"], args["stage"], args["pairs"], args["out"], _options(args["options"]), progress=steps
        )
    result = report.to_dict()
    write_json(Path(payload["marker"]), {"fingerprint": payload["fingerprint"], "report": result})
    return result
