"""One job of an experiment in its own process: `python -m fslm.experiment.worker '<job JSON>'`.

A process per system keeps each evaluation's peak RSS its own (summary.json reports it) and lets `--jobs N` run
systems side by side. The worker stops after the batch in flight when its parent is gone, so killing the runner
never leaves an orphan holding a run folder's lock for long.

Exit codes: 0 done, 2 a user error (printed as `error: ...`), 75 the run folder is being written by another process.
"""

from __future__ import annotations

import json
import os
import sys

BUSY = 75
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def _watch_parent(parent: int):
    def check(event: dict | str) -> None:
        if os.getppid() != parent:
            print("parent runner is gone; stopping after this batch (a rerun resumes)", flush=True)
            raise SystemExit(1)
        if isinstance(event, str):
            print(event, flush=True)
        elif event.get("new"):
            print(f"{event['task']}: {event['done']}/{event['total']} acc {100 * event['acc']:.1f}%", flush=True)

    return check


def run_eval(payload: dict, progress) -> dict:
    from fslm.evaluate import evaluate, load_system

    spec = payload["system"]
    if "model" in spec:
        system = load_system(
            model=spec["model"],
            expert_delta=spec.get("expert_delta"),
            delta_alpha=spec.get("delta_alpha", 1.0),
            dtype=spec.get("dtype"),
        )
    else:
        system = load_system(
            stack=spec["stack"],
            adapters=spec["adapters"],
            answer_format=spec["answer_format"],
            stage_cache=spec.get("stage_cache"),
        )
    summary = evaluate(
        system,
        payload["tasks"],
        payload["limit"],
        payload["num_fewshot"],
        payload["out_dir"],
        split=payload["split"],
        batch_size=payload["batch_size"],
        gen_max_tokens=payload["gen_max_tokens"],
        metrics=payload.get("metrics"),
        progress=progress,
    )
    return {"macro_acc": summary.macro_acc, "n_items": summary.data["n_items"]}


def run_job(payload: dict, progress) -> int:
    """Run one job with `progress` getting its lines; returns the exit code (printed errors as `error: ...`)."""
    from fslm.errors import FslmError
    from fslm.evaluate.store import RunFolderBusy

    try:
        if payload["kind"] == "train":
            from fslm.experiment.train import run_training

            result = run_training(payload, progress)
        else:
            result = run_eval(payload, progress)
    except RunFolderBusy as err:
        print(f"error: {err}", flush=True)
        return BUSY
    except FslmError as err:
        print(f"error: {err}", flush=True)
        return 2
    print(f"finished: {json.dumps(result)[:500]}", flush=True)
    return 0


def run_inline(payload: dict, log) -> int:
    """The same job in the runner's own process, its lines appended to the open `log` file (isolate=False: no
    process start per job, for tests and debuggers; peak RSS is then the runner's)."""
    import contextlib

    def progress(event: dict | str) -> None:
        if isinstance(event, str):
            print(event, flush=True)
        elif event.get("new"):
            print(f"{event['task']}: {event['done']}/{event['total']} acc {100 * event['acc']:.1f}%", flush=True)

    with contextlib.redirect_stdout(log):
        try:
            return run_job(payload, progress)
        except Exception as err:  # a crash fails this job, not the runner (as a crashed worker process would)
            print(f"error: {type(err).__name__}: {err}", flush=True)
            return 1


def main(argv: list[str]) -> int:
    for key, value in QUIET.items():  # library chatter stays out of the job's log
        os.environ.setdefault(key, value)
    payload = json.loads(argv[0])
    return run_job(payload, _watch_parent(payload["parent"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
