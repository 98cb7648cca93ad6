"""`distill(ray=...)` on a real local Ray cluster: the same records as one process, every record exactly once when a
worker process is killed mid-run, and runs that mix Ray and single-process sessions resume into the same file."""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from importlib.util import find_spec

import pytest
import yaml
from conftest import new_ray_worker, ray_worker_names  # tests/conftest.py (tests/ is on sys.path under pytest)

from fslm.distill import DistillOptions, distill
from fslm.errors import ConfigError
from fslm.teachers import LocalTeacher, make_teacher

from .conftest import ALPACA, read_lines, tiny_stack, write_alpaca

pytestmark = pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed: pip install 'fslm[ray]'")
OPTIONS = DistillOptions(batch_size=2)  # 15 records -> 8 batches over 2 actors


class Stop(Exception):
    """Stands for a kill of the driver after some batches were written."""


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The stack, the data and the single-process reference output, made once for the module."""
    root = tmp_path_factory.mktemp("ray-distill")
    stack = root / "stack.yaml"
    stack.write_text(yaml.safe_dump(tiny_stack(tiny_model_dir)))
    data = write_alpaca(root / "alpaca.json", ALPACA)
    reference = root / "single.jsonl"
    distill(stack, data, reference, teacher=LocalTeacher.load(str(tiny_model_dir)), options=OPTIONS)
    return stack, data, without_seconds(read_lines(reference)), partial(make_teacher, str(tiny_model_dir))


def test_ray_writes_the_records_a_single_process_writes(setup, ray_cluster, tmp_path):
    stack, data, reference, teacher = setup
    out = tmp_path / "ray.jsonl"
    report = distill(stack, data, out, teacher=teacher, options=OPTIONS, ray="auto")
    assert without_seconds(read_lines(out)) == reference  # same records, same order, same teacher id
    assert report.written == len(reference) and report.resubmitted == 0


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(setup, ray_cluster, tmp_path):
    stack, data, reference, teacher = setup
    out = tmp_path / "ray.jsonl"
    killed, before = [], ray_worker_names()

    def progress(done: int, total: int) -> None:
        if done and not killed:  # one batch written, the others in flight on both actors
            _, pid = new_ray_worker(ray_cluster, before)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    report = distill(stack, data, out, teacher=teacher, options=OPTIONS, ray="auto", ray_actors=2, progress=progress)
    assert killed and report.resubmitted >= 1  # the kill hit batches in flight; they went to a fresh actor
    assert without_seconds(read_lines(out)) == reference and report.written == len(reference)


@pytest.mark.parametrize("first,then", [("auto", None), (None, "auto")], ids=["ray-then-single", "single-then-ray"])
def test_an_interrupted_run_resumes_in_the_other_mode(setup, ray_cluster, tmp_path, first, then):
    stack, data, reference, teacher = setup
    out = tmp_path / "mixed.jsonl"

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        distill(stack, data, out, teacher=teacher, options=OPTIONS, ray=first, progress=stop_after_two_batches)
    assert 4 <= len(read_lines(out)) < len(reference)
    report = distill(stack, data, out, teacher=teacher, options=OPTIONS, ray=then)
    assert report.already_done + report.written == len(reference)
    assert without_seconds(read_lines(out)) == reference


def test_the_cli_fans_out_with_ray(setup, ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from fslm.cli import app

    stack, data, reference, _ = setup
    out = tmp_path / "cli.jsonl"
    argv = ["distill", "--stack", str(stack), "--data", str(data), "--out", str(out), "--batch-size", "2"]
    result = CliRunner().invoke(app, [*argv, "--ray", "auto", "--ray-actors", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == len(reference)
    assert without_seconds(read_lines(out)) == reference


def test_a_loaded_teacher_is_refused_with_ray(setup, ray_cluster, tiny_engine, tmp_path):
    stack, data, _, _ = setup
    with pytest.raises(ConfigError, match="pass the teacher as a factory"):
        distill(stack, data, tmp_path / "x.jsonl", teacher=LocalTeacher(tiny_engine), options=OPTIONS, ray="auto")
