"""Stopping the recipe: SIGTERM is recorded like Ctrl-C, and an evaluation worker never outlives the recipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import RECIPE_DIR

SCRIPT = """
import sys, time
sys.path.insert(0, {recipe_dir!r})
import run
from recipe import Recipe

def slow_step(recipe, log=print):
    print("started", flush=True)
    time.sleep(120)

run.STEP_FUNCS["distill"] = (lambda recipe: False, slow_step)
recipe = Recipe.for_scale("smoke", {out!r}, {work!r})
run.run_recipe(recipe, ["distill"])
"""


def test_sigterm_records_the_running_step_as_failed(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    code = SCRIPT.format(recipe_dir=str(RECIPE_DIR), out=str(out), work=str(work))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lines = iter(proc.stdout.readline, "")
    assert any(line.strip() == "started" for line in lines)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    step = json.loads((out / "steps.json").read_text())["steps"]["distill"]
    assert step["status"] == "failed" and step["sessions"][-1]["note"].startswith("SystemExit")
    assert step["wall_seconds"] >= 0.3  # the time spent before the kill is kept


def test_stopping_the_worker_stops_its_whole_process_group(tmp_path):
    """The eval worker runs under `sh -c`; killing only the shell would orphan the Python process below it."""
    from eval_step import _stop_group

    pid_file = tmp_path / "grandchild.pid"
    proc = subprocess.Popen(["/bin/sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], start_new_session=True)
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    _stop_group(proc, grace=10)
    assert proc.poll() is not None
    for _ in range(100):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"grandchild {grandchild} survived")
    assert (
        not Path(f"/proc/{grandchild}").exists() or "zombie" in Path(f"/proc/{grandchild}/status").read_text().lower()
    )
