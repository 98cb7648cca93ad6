"""SIGKILL `fslm distill` mid-run, rerun: the same final records, no duplicate ids, no corrupt line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import write_alpaca

FSLM = [sys.executable, "-c", "from fslm.cli import main; main()"]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_rerun_gives_every_record_exactly_once(stack_file, tmp_path):
    records = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"The sum is {2 * i + 1}."} for i in range(120)
    ]
    data = write_alpaca(tmp_path / "many.jsonl", records, jsonl=True)
    out = tmp_path / "d.jsonl"
    cmd = FSLM + [
        "distill",
        "--stack",
        str(stack_file),
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--json",
    ]
    env = {**os.environ, "FSLM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _lines(out) < 8:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "distill wrote nothing in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = _lines(out)
    assert 0 < killed_at < len(records), "the kill must land mid-run"
    with out.open("ab") as fh:  # and a write cut short by the kill, the worst case for the file
        fh.write(b'{"id": "partial", "targets": {"inte')

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["already_done"] == killed_at and report["written"] == len(records) - killed_at
    assert report["repaired_bytes"] == len(b'{"id": "partial", "targets": {"inte')
    lines = out.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is complete JSON
    ids = [r["id"] for r in parsed]
    assert len(ids) == len(set(ids)) == len(records)
    assert [r["index"] for r in parsed] == list(range(len(records)))  # in order, nothing skipped or repeated
