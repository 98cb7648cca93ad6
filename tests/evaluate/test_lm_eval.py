"""The lm-eval path: our task YAMLs + the fslm model class give the same requests and accuracies as fslm eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fslm.evaluate.harness import agreement, tasks_dir, to_doc
from fslm.tasks import build_context, load_task

from .conftest import needs_data

pytestmark = needs_data

TASKS = ["arc_easy", "winogrande", "truthfulqa_mc2", "mmlu", "boolq", "gsm8k"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    reset_settings()
    yield tmp_path
    reset_settings()


def test_builtin_and_lm_eval_agree_item_for_item(model_system, cache, monkeypatch):
    seen: list[tuple[str, str]] = []
    original = model_system.engine.score

    def recording(contexts, continuations, adapter=None):
        seen.extend(zip(contexts, continuations))
        return original(contexts, continuations, adapter=adapter)

    monkeypatch.setattr(model_system.engine, "score", recording)
    report = agreement(model_system, TASKS, 3, gen_max_tokens=8)
    assert report["all_same"], json.dumps(report, indent=1)
    assert set(report["tasks"]) == set(TASKS) and all(r["n"] == 3 for r in report["tasks"].values())
    # lm-eval asked for exactly the (context, continuation) pairs fslm eval scores
    ours = set()
    for task in TASKS[:-1]:
        from fslm.evaluate import select_items

        for item in select_items(task, 3):
            for i, cont in enumerate(item.continuations):
                ours.add((build_context(item, (), choice=i if item.contexts else None), cont))
    assert ours <= set(seen)
    assert len(set(seen)) == len(ours)  # built-in and lm-eval requested the same set, nothing else


def test_documents_keep_the_lm_eval_layout():
    item = load_task("winogrande", limit=1)[0]
    doc = to_doc(item)
    assert doc["contexts"] == list(item.contexts) and " " + doc["continuation"] == item.continuations[0]
    mmlu = load_task("mmlu", limit=1)[0]
    doc = to_doc(mmlu)
    assert doc["description"] + doc["context"] == mmlu.context
    assert [" " + c for c in doc["choices"]] == list(mmlu.continuations)


def test_lm_eval_cli_wrapper_runs_offline(tiny_model_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", FSLM_CACHE_DIR=str(tmp_path / "cache"),
               HF_DATASETS_CACHE=str(tmp_path / "hf"))
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "fslm.lm_eval_plugin", "--model", "fslm", "--model_args", f"model={tiny_model_dir}",
           "--tasks", "fslm_arc_easy,fslm_piqa", "--limit", "2", "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fslm_arc_easy" in proc.stdout and "acc" in proc.stdout
    assert tasks_dir().joinpath("fslm_arc_easy.yaml").is_file()
