"""SIGKILL `fslm finetune` mid-stage, rerun the same command: it resumes from the last checkpoint and ends with the
same adapters as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from fslm.finetune import TrainOptions, finetune

FSLM = [sys.executable, "-c", "from fslm.cli import main; main()"]
ARGS = dict(epochs=3, batch_size=2, lr=2e-3, rank=4, alpha=8, save_every=4, threads=1)


def test_kill_mid_stage_then_rerun_resumes_and_matches_an_uninterrupted_run(
    stack_file, distilled_file, tmp_path, fresh_engine
):
    out = tmp_path / "out"
    cmd = FSLM + [
        "finetune",
        "--stack",
        str(stack_file),
        "--data",
        str(distilled_file),
        "--out",
        str(out),
        "--stages",
        "intent,answer",
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "2e-3",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--save-every",
        "4",
        "--threads",
        "1",
        "--json",
    ]
    env = {**os.environ, "FSLM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "intent" / "latest.json"
    deadline = time.monotonic() + 240
    while not (pointer.is_file() and json.loads(pointer.read_text())["step"] >= 8):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (out / "adapters" / "intent").exists(), "the kill must land before the stage finished"
    at = json.loads(pointer.read_text())["step"]

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    intent = report["stages"]["intent"]
    assert (
        intent["resumed_from_step"] == at
        and intent["steps"] == 24
        and report["stages"]["answer"]["resumed_from_step"] is None
    )
    log = json.loads((out / "train_log.json").read_text())
    assert [s["step"] for s in log["stages"]["intent"]["steps"]] == list(range(1, 25))  # no gap, no repeat

    reference = finetune(
        stack_file,
        distilled_file,
        tmp_path / "ref",
        TrainOptions(**ARGS),
        stages=["intent", "answer"],
        engine=fresh_engine,
    )
    ref_log = json.loads((tmp_path / "ref" / "train_log.json").read_text())
    for name in ("intent", "answer"):
        resumed = load_file(out / "adapters" / name / "adapter_model.safetensors")
        straight = load_file(tmp_path / "ref" / "adapters" / name / "adapter_model.safetensors")
        assert resumed.keys() == straight.keys()
        for key in resumed:
            assert torch.allclose(resumed[key], straight[key], atol=1e-6), (name, key)
        assert [s["loss"] for s in log["stages"][name]["steps"]] == [
            s["loss"] for s in ref_log["stages"][name]["steps"]
        ]
    assert reference.stages["intent"]["resumed_from_step"] is None
