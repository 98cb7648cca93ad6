"""`fslm experiment run` end to end on the tiny model: every job in its own process, rerun = no work, a killed run
resumes, --status shows where it stands, the report has its tables, comparisons, selection, traces and plot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fslm.cli.experiment import app
from fslm.errors import FslmError
from fslm.evaluate.store import folder_busy
from fslm.experiment import ExperimentError, build_plan, load_spec, run_experiment

from .conftest import needs_data, write_spec

runner = CliRunner()


def spec_dict(model_dir) -> dict:
    return {
        "name": "tiny-e2e",
        "description": "A tiny random model and a 2-stage stack on it.",
        "evaluation": {"tasks": ["arc_easy", "openbookqa"], "limit": 3, "batch_size": 2},
        "systems": {
            "base": {"model": str(model_dir)},
            "stack": {"stack": "stack.yaml", "label": "2-stage stack"},
            "answer-only": {"from": "stack", "patch": {"drop": ["intent"]}},
        },
        "comparisons": [["stack", "base"], ["selected", "base"], {"a": "stack", "b": "base", "heldout": True}],
        "selection": {"among": ["stack", "answer-only"], "context": ["base"], "limit": 2},
        "report": {"traces": [{"system": "stack", "count": 2}, {"system": "stack", "where": "wrong", "count": 1}]},
    }


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tiny_adapters, tmp_path_factory):
    """The experiment run once (jobs=2); tests copy it before changing anything."""
    import yaml

    from .conftest import tiny_stack

    root = tmp_path_factory.mktemp("experiment")
    (root / "stack.yaml").write_text(yaml.safe_dump(tiny_stack(tiny_model_dir, tiny_adapters)))
    spec = write_spec(root, spec_dict(tiny_model_dir))
    messages: list[str] = []
    t0 = time.perf_counter()
    result = run_experiment(spec, jobs=2, log=messages.append)
    return root, spec, result, messages, time.perf_counter() - t0


@needs_data
def test_every_job_runs_in_its_own_process_and_the_report_is_written(finished):
    root, _, result, messages, _ = finished
    out = root / "exp"
    assert sorted(result.ran) == sorted(
        ["eval:base", "eval:stack", "eval:answer-only", "select:stack", "select:answer-only", "select:base"]
    )
    assert not result.failed and all(job.state == "done" for job in result.plan.jobs.values())
    pids = {
        json.loads((out / "runs" / n / "run.json").read_text())["sessions"][0]["started"] for n in ("base", "stack")
    }
    assert pids  # each run folder records its own session
    rss = [
        json.loads((out / "runs" / n / "summary.json").read_text())["cost"]["peak_rss_mb"] for n in ("base", "stack")
    ]
    assert all(r > 0 for r in rss)
    for name in ("RESULTS.md", "results.json", "pareto.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert results["items_per_system"] == 6
    assert {n: e["n_items"] for n, e in results["systems"].items()} == {"base": 6, "stack": 6, "answer-only": 6}
    cpu = {
        n: json.loads((out / "runs" / n / "summary.json").read_text())["cost"]["cpu_seconds"]
        for n in results["systems"]
    }
    for name, e in results["systems"].items():  # CPU seconds per item, from the run's own sessions (0.1 s resolution)
        assert e["cpu_seconds_per_item"] == (round(cpu[name] / 6, 4) if cpu[name] else None)
    assert any(cpu.values())
    sel = results["selection"]
    assert sel["chosen"] in ("stack", "answer-only") and set(sel["heldout_macro"]) == {"stack", "answer-only", "base"}
    best = max(sel["heldout_macro"][n] for n in ("stack", "answer-only"))
    assert sel["heldout_macro"][sel["chosen"]] == best
    assert sel["beaten_by_context"] == (["base"] if sel["heldout_macro"]["base"] > best else [])
    pairs = results["comparisons"]
    assert [(c["a"], c["b"], c["state"]) for c in pairs] == [
        ("stack", "base", "done"),
        (sel["chosen"], "base", "done"),
        ("stack", "base", "done"),
    ]
    assert (
        pairs[2]["tasks"]["macro"]["n"] == 4 and (out / "compare" / "heldout-stack-vs-base" / "compare.json").is_file()
    )
    assert (out / "compare" / "stack-vs-base" / "compare.json").is_file()
    assert pairs[0]["tasks"]["macro"]["n"] == 6
    first, wrong = results["traces"]
    assert len(first["items"]) == 2 and set(first["items"][0]["stages"]) == {
        "intent"
    }  # the answer stage scores the options
    assert all(not item["correct"] for item in wrong["items"])
    md = (out / "RESULTS.md").read_text()
    for text in ("| stack | 2-stage stack |", "## Comparisons", "## Selection on held-out items", "![accuracy vs"):
        assert text in md
    assert (out / "stacks" / "answer-only.yaml").is_file() and any("eval:base: done" in m for m in messages)


@needs_data
def test_rerun_starts_no_process_and_rewrites_nothing(finished):
    root, spec, _, _, _ = finished
    out = root / "exp"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"}
    result = run_experiment(spec, jobs=2)
    assert result.ran == [] and not result.failed
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"}
    assert after == before


@needs_data
def test_status_shows_done_partial_and_not_started(finished, tmp_path):
    root, _, _, _, _ = finished
    shutil.copytree(root, tmp_path / "copy")
    spec = tmp_path / "copy" / "exp.yaml"
    out = tmp_path / "copy" / "exp"
    items = out / "runs" / "stack" / "items.jsonl"
    items.write_text("".join(items.read_text().splitlines(keepends=True)[:2]))
    (out / "runs" / "stack" / "summary.json").unlink()
    shutil.rmtree(out / "runs" / "base")
    result = runner.invoke(app, ["run", str(spec), "--status"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "base │ not started 0/6" in text and "stack │ partial 2/6" in text and "answer-only │ done 6/6" in text
    assert not (out / "runs" / "base").exists()  # --status runs nothing


@needs_data
def test_a_run_cut_short_resumes_where_its_rows_stop(finished, tmp_path):
    root, _, _, _, _ = finished
    shutil.copytree(root, tmp_path / "copy")
    spec = tmp_path / "copy" / "exp.yaml"
    run = tmp_path / "copy" / "exp" / "runs" / "stack"
    lines = (run / "items.jsonl").read_text().splitlines(keepends=True)
    (run / "items.jsonl").write_text("".join(lines[:2]) + lines[2][:40])  # a torn write of the batch in flight
    (run / "summary.json").unlink()
    result = run_experiment(spec)
    assert result.ran == ["eval:stack"] and result.plan.jobs["eval:stack"].state == "done"
    rows = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    session = json.loads((run / "run.json").read_text())["sessions"][-1]
    assert session["items_evaluated"] == 4  # only the missing items were evaluated


@needs_data
def test_killing_the_runner_then_rerunning_finishes_without_duplicates(tiny_model_dir, tmp_path):
    spec = write_spec(
        tmp_path,
        {
            "name": "kill",
            "evaluation": {"tasks": ["arc_easy", "openbookqa"], "limit": 3, "batch_size": 1},
            "systems": {"base": {"model": str(tiny_model_dir)}},
        },
    )
    items = tmp_path / "exp" / "runs" / "base" / "items.jsonl"
    code = "import sys; from fslm.experiment import run_experiment; run_experiment(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec)], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if items.is_file() and items.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-run (or just after it finished)
    proc.wait()
    while folder_busy(items.parent) and time.monotonic() < deadline + 30:  # the killed worker's lock goes with it
        time.sleep(0.05)
    killed_at = items.read_text().count("\n") if items.is_file() else 0
    result = run_experiment(spec)
    assert result.plan.jobs["eval:base"].state == "done"
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    sessions = json.loads((items.parent / "run.json").read_text())["sessions"]
    assert sum(s.get("items_evaluated", 0) for s in sessions) >= 6 - killed_at


def test_a_failing_job_is_reported_and_the_others_still_run(tiny_model_dir, tiny_data, tmp_path):
    spec = write_spec(
        tmp_path,
        {
            "name": "fail",
            "evaluation": {"tasks": ["arc_easy"]},
            "systems": {"ghost": {"model": str(tmp_path / "no-such-model")}, "base": {"model": str(tiny_model_dir)}},
            "comparisons": [["base", "ghost"]],
        },
    )
    with pytest.raises(ExperimentError) as err:
        run_experiment(spec, jobs=2)
    assert "1 job(s) did not finish" in str(err.value) and "eval:ghost: error:" in str(err.value)
    result = err.value.result
    assert result.plan.jobs["eval:base"].state == "done" and result.plan.jobs["eval:ghost"].state == "not started"
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert [(c["a"], c["b"], c["state"]) for c in results["comparisons"]] == [("base", "ghost", "waiting for ghost")]
    assert "| ghost | " in (tmp_path / "exp" / "RESULTS.md").read_text()
    assert "error:" in (tmp_path / "exp" / "logs" / "eval-ghost.log").read_text()


def test_a_missing_adapter_is_refused_before_any_process_starts(tiny_model_dir, tiny_data, tmp_path):
    import yaml

    stack = {
        "name": "broken",
        "base_model": str(tiny_model_dir),
        "stages": [{"name": "answer", "instruction": "Answer.", "adapter": "missing/answer"}],
    }
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(stack))
    spec = write_spec(
        tmp_path,
        {
            "name": "fail",
            "evaluation": {"tasks": ["arc_easy"]},
            "systems": {"base": {"model": str(tiny_model_dir)}, "broken": {"stack": "broken.yaml"}},
        },
    )
    with pytest.raises(FslmError, match="systems.broken: .*stages.0.adapter"):
        run_experiment(spec)
    assert not (tmp_path / "exp" / "runs").exists()
    plan = build_plan(load_spec(spec))
    assert [j.progress for j in plan.jobs.values()] == ["not started 0/3", "not started 0/3"]


def test_a_proxy_tuned_model_system_is_evaluated_and_a_missing_delta_adapter_refused(
    tiny_model_dir, tiny_adapters, tiny_data, tmp_path
):
    shutil.copytree(tiny_adapters["intent"], tmp_path / "adapters" / "intent")
    delta = f"{tiny_model_dir}+adapters/intent:{tiny_model_dir}"  # the adapter relative to the spec file
    systems = {"steered": {"model": str(tiny_model_dir), "expert_delta": delta, "delta_alpha": 2.0}}
    spec = write_spec(tmp_path, {"name": "proxy", "evaluation": {"tasks": ["arc_easy"]}, "systems": systems})
    result = run_experiment(spec, isolate=False)
    assert result.ran == ["eval:steered"]
    summary = json.loads((tmp_path / "exp" / "runs" / "steered" / "summary.json").read_text())
    assert summary["proxy_tuning"]["alpha"] == 2.0 and summary["n_items"] == 3
    assert summary["proxy_tuning"]["tuned"].endswith("adapters/intent")
    systems["broken"] = {"model": str(tiny_model_dir), "expert_delta": f"{tiny_model_dir}+adapters/missing:m"}
    spec = write_spec(tmp_path, {"name": "proxy", "evaluation": {"tasks": ["arc_easy"]}, "systems": systems})
    with pytest.raises(FslmError, match="systems.broken.expert_delta: .*adapters/missing is not a folder"):
        run_experiment(spec, isolate=False)
    assert not (tmp_path / "exp" / "runs" / "broken").exists()


def test_a_model_system_is_evaluated_in_its_dtype(tiny_model_dir, tiny_data, tmp_path):
    systems = {"half": {"model": str(tiny_model_dir), "dtype": "bfloat16"}}
    spec = write_spec(tmp_path, {"name": "half", "evaluation": {"tasks": ["arc_easy"]}, "systems": systems})
    assert run_experiment(spec, isolate=False).ran == ["eval:half"]
    run = tmp_path / "exp" / "runs" / "half"
    assert json.loads((run / "run.json").read_text())["identity"]["dtype"] == "bfloat16"
    assert json.loads((run / "summary.json").read_text())["n_items"] == 3


def test_cli_errors_exit_2_with_one_line(tmp_path):
    bad = write_spec(tmp_path, {"name": "x", "evaluation": {"tasks": ["arc_easy"]}, "systems": {"a": {}}})
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "systems.a: give exactly one of model, stack, from" in result.output
    result = runner.invoke(app, ["run", str(bad), "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs must be at least 1" in result.output


@needs_data
def test_an_edited_system_is_stale_and_reevaluated_with_the_old_run_kept_aside(finished, tmp_path):
    import yaml

    root, _, _, _, _ = finished
    shutil.copytree(root, tmp_path / "copy")
    spec = tmp_path / "copy" / "exp.yaml"
    data = yaml.safe_load(spec.read_text())
    data["systems"]["answer-only"]["patch"]["stages"] = {"answer": {"instruction": "Reply with the option."}}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = build_plan(load_spec(spec))
    assert plan.jobs["eval:answer-only"].state == "stale" and plan.jobs["eval:stack"].state == "done"
    shown = runner.invoke(app, ["run", str(spec), "--status"])
    assert shown.exit_code == 0 and "answer-only │ stale 6/6" in " ".join(shown.output.split())
    result = run_experiment(spec, jobs=2)
    assert sorted(result.ran) == ["eval:answer-only", "select:answer-only"]
    runs = tmp_path / "copy" / "exp" / "runs"
    assert (runs / "answer-only.stale-1" / "items.jsonl").is_file()
    assert "Reply with the option." in (runs / "answer-only" / "experiment.json").read_text()
    assert result.plan.jobs["eval:answer-only"].state == "done"


EXPERIMENT_SUMMARY = "Run an experiment from one YAML spec: train, evaluate, compare, report; reruns resume."


def test_the_verb_registers_lazily_with_its_summary():
    """What fslm/cli/__init__.py's VERBS entry will do: `Verb("experiment", "app", EXPERIMENT_SUMMARY, extra="eval")`."""
    import typer

    from fslm.cli.lazy import LazyGroup, Verb

    class Group(LazyGroup):
        verbs = {"experiment": Verb("experiment", "app", EXPERIMENT_SUMMARY, extra="eval")}

    root = typer.Typer(cls=Group)
    root.callback()(lambda: None)
    group = typer.main.get_command(root)
    loaded = group.load("experiment")
    assert (loaded.help or "").split("\n\n")[0].strip() == EXPERIMENT_SUMMARY
    assert "run" in loaded.commands
