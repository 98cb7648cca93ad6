"""The lm-eval path: our task YAMLs + the fslm model class give the same requests and accuracies as fslm eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FSLM_CACHE_DIR=str(tmp_path / "cache"),
        HF_DATASETS_CACHE=str(tmp_path / "hf"),
    )
    out = tmp_path / "lm_eval_out"
    cmd = [
        sys.executable,
        "-m",
        "fslm.lm_eval_plugin",
        "--model",
        "fslm",
        "--model_args",
        f"model={tiny_model_dir}",
        "--tasks",
        "fslm_arc_easy,fslm_piqa",
        "--limit",
        "2",
        "--output_path",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fslm_arc_easy" in proc.stdout and "acc" in proc.stdout
    assert tasks_dir().joinpath("fslm_arc_easy.yaml").is_file()


def test_the_lm_eval_command_finds_the_fslm_model(tiny_model_dir, tmp_path):
    """What README tells users to type: lm-eval's own console script, `--model fslm`, our task folder included."""
    lm_eval = Path(sys.executable).with_name("lm_eval")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FSLM_CACHE_DIR=str(tmp_path / "cache"),
        HF_DATASETS_CACHE=str(tmp_path / "hf"),
    )
    cmd = [
        str(lm_eval),
        "--model",
        "fslm",
        "--model_args",
        f"model={tiny_model_dir}",
        "--tasks",
        "fslm_arc_easy",
        "--include_path",
        str(tasks_dir()),
        "--limit",
        "3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|fslm_arc_easy")]
    assert table and "acc" in table[0], proc.stdout[-2000:]


def test_the_startup_hook_registers_fslm_lazily():
    """The .pth hook adds a placeholder when lm-eval's registry loads, and imports nothing of fslm until asked."""
    code = (
        "import sys; import lm_eval.api.registry as r; "
        "assert 'fslm' in r.model_registry, 'not registered'; "
        "assert 'fslm.lm_eval_plugin' not in sys.modules, 'imported too early'; "
        "cls = r.get_model('fslm'); print(cls.__module__ + '.' + cls.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "fslm.lm_eval_plugin.FslmLM"


class _Req:
    def __init__(self, *args):
        self.args = args


def test_plugin_methods_in_model_and_stack_mode(model_system, tiny_engine):
    from fslm.config import parse_stack_config
    from fslm.evaluate import StackSystem
    from fslm.lm_eval_plugin import FslmLM
    from fslm.stack import Stack

    lm = FslmLM(system=model_system)
    ((lp, greedy),) = lm.loglikelihood([_Req("Question: sky?\nAnswer:", " blue")])
    assert lp == pytest.approx(tiny_engine.score(["Question: sky?\nAnswer:"], [" blue"])[0].logprob, abs=1e-5)
    rolled = lm.loglikelihood_rolling([_Req("the quick brown fox")])[0]
    assert rolled == pytest.approx(tiny_engine.score([""], ["the quick brown fox"])[0].logprob, abs=1e-5)
    long_text = "the quick brown fox jumps over the lazy dog. " * 60  # longer than the 512-token window
    assert tiny_engine.count_tokens(long_text) > tiny_engine.context_window
    assert lm.loglikelihood_rolling([_Req(long_text)])[0] < rolled
    texts = lm.generate_until([_Req("Question: 2+2?\nAnswer:", {"until": ["\n"], "max_gen_toks": 5})])
    assert isinstance(texts[0], str) and "\n" not in texts[0]

    cfg = {
        "name": "t",
        "base_model": "tiny",
        "stages": [
            {"name": "facts", "instruction": "Facts.", "generation": {"max_new_tokens": 4}},
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "facts"],
                "generation": {"max_new_tokens": 4},
            },
        ],
    }
    stack = Stack(parse_stack_config(cfg), tiny_engine)
    slm = FslmLM(system=StackSystem(stack))
    ctx = "Question: sky?\nAnswer:"
    got = slm.loglikelihood([_Req(ctx, " blue"), _Req(ctx, " red")])
    facts = stack.run_batch([ctx.strip()], stages=1)[0]
    answer_input = stack.answer_input(facts)
    want = tiny_engine.score([answer_input] * 2, ["blue", "red"])
    assert [g[0] for g in got] == pytest.approx([w.logprob for w in want], abs=1e-5)
    out = slm.generate_until([_Req(ctx, {"until": ["\n\n"], "max_gen_toks": 8})])
    assert out == [stack.run(ctx.strip()).answer.split("\n\n")[0]]


def test_a_raw_scorer_stack_scores_lm_eval_requests_as_they_are(tiny_engine, tiny_adapters):
    """The packaged default's shape: options go to a raw-format score stage with its adapter, free-form prompts to a
    chain. lm-eval's loglikelihood requests are raw contexts + options: scored by the scorer, unchanged."""
    from fslm.config import parse_stack_config
    from fslm.evaluate import StackSystem
    from fslm.lm_eval_plugin import FslmLM
    from fslm.stack import Stack

    cfg = {
        "name": "t",
        "base_model": "tiny",
        "stages": [
            {
                "name": "pick",
                "score": {"format": "raw"},
                "adapter": str(tiny_adapters["answer"]),
                "when": "has_options",
                "final": True,
            },
            {
                "name": "answer",
                "instruction": "Answer.",
                "when": "no_options",
                "final": True,
                "generation": {"max_new_tokens": 4},
            },
        ],
    }
    stack = Stack(parse_stack_config(cfg), tiny_engine)
    slm = FslmLM(system=StackSystem(stack))
    ctx = "Question: sky?\nAnswer:"
    got = slm.loglikelihood([_Req(ctx, " blue"), _Req(ctx, " red")])
    want = tiny_engine.score([ctx, ctx], [" blue", " red"], adapter="pick")
    assert [g[0] for g in got] == pytest.approx([w.logprob for w in want], abs=1e-5)
    plain = tiny_engine.score([ctx], [" blue"])[0].logprob
    assert got[0][0] != pytest.approx(plain, abs=1e-4)  # the adapter is on
