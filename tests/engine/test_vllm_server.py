"""Endpoint stages against vLLM's own OpenAI-compatible server (`vllm serve`), the GPU-host shape run on CPU.

The default stack with a top-level `endpoint:` runs every model stage on the server: its adapters served as LoRA
modules named like the stages, the `pick` stage scored through `/v1/completions` with echo + logprobs. Answers must
equal the local HF engine's. Runs only where vLLM is installed (`make test-vllm`); elsewhere it skips.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed here: run `make test-vllm`"),
    pytest.mark.slow,
]
PROMPTS = ["What is the capital of France?", "How many legs does a spider have?"]
OPTIONS = "Which gas do plants take in from the air?\nA. helium\nB. carbon dioxide\nC. neon"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vllm serve` on the embedded SmolLM2 with the default stack's adapters as LoRA modules; yields its /v1 URL."""
    from fslm.config import load_default_stack_config
    from fslm.engine.vllm import LORA_TARGETS, model_folder

    cfg = load_default_stack_config()
    modules = [f"{s.name}={cfg.adapter_path(s)}" for s in cfg.stages if s.adapter is not None]
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_folder(cfg.base_model)]
    cmd += ["--served-model-name", cfg.base_model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    cmd += ["--enable-lora", "--max-lora-rank", "16", "--lora-modules", *modules, "--max-model-len", "2048"]
    # as the vllm engine does: LoRA on the decoder's linear layers only, or scoring (prompt logprobs) of more than
    # one row crashes in the wrapped lm_head (docs/engine.md, "The vLLM engine")
    cmd += ["--lora-target-modules", *LORA_TARGETS]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, f"vllm serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "vllm serve did not start in 10 minutes"
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def stacks(server, tmp_path_factory):
    """(the default stack on the server, the default stack on the local HF engine)."""
    from fslm.config import load_default_stack_config
    from fslm.stack import Stack

    folder = tmp_path_factory.mktemp("stack")
    source = Path(load_default_stack_config().source_path)
    data = yaml.safe_load(source.read_text())
    data["endpoint"] = {"base_url": server, "timeout": 300, "attempts": 2}
    data.pop("engine", None)
    shutil.copytree(source.parent / "default", folder / "default")  # the adapters stay beside the stack file
    (folder / "served.yaml").write_text(yaml.safe_dump(data))
    return Stack.load(folder / "served.yaml"), Stack.load(backend="hf")


def test_served_stages_answer_as_the_local_engine(stacks):
    served, local = stacks
    got, want = served.run_batch(PROMPTS), local.run_batch(PROMPTS)
    assert [r.answer for r in got] == [r.answer for r in want]
    assert [[rec.stage for rec in r.trace] for r in got] == [[rec.stage for rec in r.trace] for r in want]
    assert "Paris" in got[0].answer


def test_a_served_score_stage_picks_the_local_engines_option(stacks):
    served, local = stacks
    picked = served.run(OPTIONS)
    assert picked.answer_stage == "pick" and picked.answer == local.run(OPTIONS).answer == "carbon dioxide"
