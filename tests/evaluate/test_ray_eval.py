"""`evaluate(ray=...)` on a real local Ray cluster: the rows and scores of a single-process run, every item exactly
once when a worker actor is killed mid-run, and a run folder that Ray and single-process sessions resume in turn."""

from __future__ import annotations

import json
from importlib.util import find_spec

import pytest
from conftest import new_ray_worker, ray_worker_names  # tests/conftest.py (tests/ is on sys.path under pytest)

from fslm.errors import InputError
from fslm.evaluate import evaluate, load_system
from fslm.settings import reset_settings

from .conftest import ARC_EASY

pytestmark = pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed: pip install 'fslm[ray]'")
GSM8K = [{"question": f"Tom has {n} apples and buys {n} more. How many?", "answer": f"#### {2 * n}"} for n in range(6)]
TASKS = ["gsm8k", "arc_easy"]  # generations first: long enough that a killed actor is busy with one
RUN = dict(batch_size=1, gen_max_tokens=32)  # 9 batches over 2 actors


class Stop(Exception):
    """Stands for a kill of the driver after some rows were written."""


def rows_of(folder) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}), "an item written twice"
    return {r["id"]: r for r in rows}


def assert_same_rows(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys()
    for key, row in want.items():
        other = got[key]
        if row["choice_scores"] is not None:  # another process may sum in another order: equal to float precision
            assert other["choice_scores"] == pytest.approx(row["choice_scores"], abs=1e-4)
        ignore = {"seconds", "choice_scores"}
        assert {k: v for k, v in other.items() if k not in ignore} == {k: v for k, v in row.items() if k not in ignore}


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """A data dir with 3 ARC-Easy and 6 GSM8K items, the system, and a single-process run's rows."""
    root = tmp_path_factory.mktemp("ray-eval")
    for task, records, name in (("arc_easy", ARC_EASY, "arc_easy.jsonl"), ("gsm8k", GSM8K, "test.jsonl")):
        (root / "data" / task).mkdir(parents=True)
        (root / "data" / task / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSLM_DATA_DIR", str(root / "data"))
        mp.setenv("FSLM_CACHE_DIR", str(root / "cache"))
        reset_settings()
        system = load_system(model=str(tiny_model_dir))
        evaluate(system, TASKS, out_dir=root / "single", **RUN)
        yield system, rows_of(root / "single"), root / "data"
    reset_settings()


def test_ray_writes_the_rows_a_single_process_writes(setup, ray_cluster, tmp_path):
    system, reference, _ = setup
    summary = evaluate(system, TASKS, out_dir=tmp_path / "ray", ray="auto", **RUN)
    assert_same_rows(rows_of(tmp_path / "ray"), reference)
    assert summary.data["n_items"] == len(reference)
    ray_session = json.loads((tmp_path / "ray" / "run.json").read_text())["sessions"][-1]["ray"]
    assert ray_session == {"actors": 2, "resubmitted": 0}


def test_a_killed_worker_actor_loses_nothing_and_duplicates_nothing(setup, ray_cluster, tmp_path):
    system, reference, _ = setup
    killed, before = [], ray_worker_names()

    def progress(event: dict) -> None:
        if event["new"] and not killed:  # one row written, the other batches queued on both actors
            actor, pid = new_ray_worker(ray_cluster, before)
            ray_cluster.kill(actor)
            killed.append(pid)

    evaluate(system, TASKS, out_dir=tmp_path / "ray", ray="auto", ray_actors=2, progress=progress, **RUN)
    assert killed
    assert_same_rows(rows_of(tmp_path / "ray"), reference)
    ray_session = json.loads((tmp_path / "ray" / "run.json").read_text())["sessions"][-1]["ray"]
    assert ray_session["resubmitted"] >= 1  # the kill hit batches in flight; a fresh actor did them


@pytest.mark.parametrize("first,then", [("auto", None), (None, "auto")], ids=["ray-then-single", "single-then-ray"])
def test_an_interrupted_run_resumes_in_the_other_mode(setup, ray_cluster, tmp_path, first, then):
    system, reference, _ = setup

    def stop_after_two_rows(event: dict) -> None:
        if event["new"] and event["done"] == 2:
            raise Stop

    with pytest.raises(Stop):
        evaluate(system, TASKS, out_dir=tmp_path / "run", ray=first, progress=stop_after_two_rows, **RUN)
    assert len(rows_of(tmp_path / "run")) == 2
    summary = evaluate(system, TASKS, out_dir=tmp_path / "run", ray=then, **RUN)
    assert_same_rows(rows_of(tmp_path / "run"), reference)
    assert summary.data["n_items"] == len(reference)
    sessions = json.loads((tmp_path / "run" / "run.json").read_text())["sessions"]
    assert [("ray" in s) for s in sessions] == [first is not None, then is not None]


def test_the_cli_fans_out_with_ray(setup, tiny_model_dir, ray_cluster, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fslm.cli import app

    _, reference, data = setup
    monkeypatch.setenv("FSLM_DATA_DIR", str(data))
    reset_settings()
    argv = ["eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, [*argv, "--ray", "auto", "--ray-actors", "2", "--json"])
    reset_settings()
    assert result.exit_code == 0, result.output
    assert_same_rows(rows_of(tmp_path / "cli"), {k: r for k, r in reference.items() if r["task"] == "arc_easy"})


def test_a_system_without_load_arguments_is_refused_with_ray(setup, ray_cluster, model_system, tmp_path):
    _, _, data = setup
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSLM_DATA_DIR", str(data))
        reset_settings()
        with pytest.raises(InputError, match="give a system made by load_system"):
            evaluate(model_system, TASKS, out_dir=tmp_path / "run", ray="auto", **RUN)
    reset_settings()
