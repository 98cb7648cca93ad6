"""Scale-out throughput, measured in ONE run on one machine: the vLLM engine vs HF, and Ray fan-out vs one process.

    python benchmarks/bench_scale.py --vllm-python /work/vllm-venv/bin/python     # run it alone on a quiet machine
    python benchmarks/bench_scale.py --smoke --out /tmp/scale-smoke               # tiny sizes: proves the script works

What it measures:
- engines (each in its own process, the same prompts, the same threads; vLLM from its own venv, `make test-vllm`):
  the base model's batched greedy generation of --gen-tokens tokens for 16 prompts (tokens/s over the whole call),
  and the packaged default stack's free-form chain (facts -> reasoning -> answer) on --questions questions in one
  `Stack.run_batch` (seconds per question); best of --repeats after a warm-up; plus whether the answers are identical;
- Ray (`fslm distill --ray`) vs one process for an I/O-bound teacher: a local HTTP server that answers every chat
  request after --latency seconds (a remote API's round trip; it does no work, so the client side is what is timed)
  distils --records Alpaca records single-process (the HTTP teacher's default concurrency) and with 2 and 4 Ray
  actors (each with that concurrency), on a local Ray cluster started once with 4 logical CPUs so that four waiting
  actors fit on the 2 cores (its start-up is reported apart; each run's time includes starting its actors).

Writes results.json, RESULTS.md and scale.png to --out (default benchmarks/results/scale/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_engine import LONG_PROMPTS  # a sibling script: its folder is on sys.path when run

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = LONG_PROMPTS  # the engine benchmark's 16 generation prompts
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make their food?",
    "What causes the seasons on Earth?",
    "Why do we have day and night?",
    "What is the boiling point of water at sea level?",
    "How does a rainbow form?",
    "What do bees make?",
]


def machine() -> dict:
    flags: set[str] = set()
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    kernel_flags = sorted(f for f in flags if f in {"avx2", "fma"} or f.startswith(("avx512", "amx")))
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "flags": kernel_flags,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }


# ---- engines (worker side: runs in the venv of the engine) -----------------------------------------------------------
def engine_worker(backend: str, gen_tokens: int, questions: int, repeats: int) -> dict:
    import torch

    from fslm.engine import GenerationParams
    from fslm.stack import Stack

    stack = Stack.load(None, backend=backend)
    engine = stack.engine
    params = GenerationParams(max_new_tokens=gen_tokens, temperature=0.0)
    texts = [engine.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    asked = [q for q in (QUESTIONS * 4)[:questions]]
    engine.generate(texts[:2], GenerationParams(max_new_tokens=4, temperature=0.0))  # warm-up
    stack.run_batch(asked[:1])
    gen_times, stack_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gens = engine.generate(texts, params)
        gen_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results = stack.run_batch(asked)
        stack_times.append(time.perf_counter() - t0)
    tokens = sum(g.tokens_out for g in gens)
    return {
        "backend": backend,
        "threads": torch.get_num_threads(),
        "gen_prompts": len(texts),
        "gen_tokens_out": tokens,
        "gen_seconds": [round(t, 3) for t in gen_times],
        "gen_tokens_per_second": round(tokens / min(gen_times), 2),
        "stack_questions": len(asked),
        "stack_seconds": [round(t, 3) for t in stack_times],
        "stack_seconds_per_question": round(min(stack_times) / len(asked), 3),
        "gen_texts": [g.text for g in gens],
        "answers": [r.answer for r in results],
    }


def run_engine(python: str, backend: str, args) -> dict:
    cmd = [python, __file__, "--worker", backend, "--gen-tokens", str(args.gen_tokens)]
    cmd += ["--questions", str(args.questions), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FSLM_LOG": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"backend": backend, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- Ray vs one process for an I/O-bound HTTP teacher ---------------------------------------------------------------
class SlowTeacherServer:
    """A real HTTP server (own threads) that answers each chat completion after `latency` seconds with a short text."""

    def __init__(self, latency: float):
        import http.server

        self.latency = latency
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(server.latency)
                body = {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "A short stage target."},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def ray_vs_single(records: int, latency: float, work: Path) -> dict:
    import functools

    import ray

    from fslm.distill import DistillOptions, distill
    from fslm.engine.http import CONCURRENCY
    from fslm.teachers import HTTPTeacher

    server = SlowTeacherServer(latency)
    teacher = functools.partial(HTTPTeacher, server.url, "slow-teacher")
    options = DistillOptions(limit=records, batch_size=8)
    rows = []
    try:

        def timed(label: str, actors: int | None, ray_address: str | None) -> None:
            out = work / f"{label}.jsonl"
            t0 = time.perf_counter()
            report = distill(None, None, out, teacher=teacher, options=options, ray=ray_address, ray_actors=actors)
            seconds = time.perf_counter() - t0
            rows.append(
                {
                    "run": label,
                    "actors": actors or 0,
                    "records": report.written,
                    "seconds": round(seconds, 2),
                    "records_per_second": round(report.written / seconds, 2),
                }
            )

        timed("single", None, None)
        t0 = time.perf_counter()
        # 4 logical CPUs on the 2 cores: every actor reserves one, and these actors mostly wait on the network
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address
        for actors in (2, 4):
            timed(f"ray-{actors}", actors, address)
    finally:
        server.close()
        if ray.is_initialized():
            ray.shutdown()
    base = rows[0]["records_per_second"]
    for row in rows:
        row["speedup"] = round(row["records_per_second"] / base, 2)
    return {
        "latency_seconds": latency,
        "teacher_concurrency": CONCURRENCY,
        "ray_startup_seconds": round(startup, 2),
        "runs": rows,
    }


# ---- report ---------------------------------------------------------------------------------------------------------
def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fslm.io import write_atomic, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    m = results["machine"]
    lines = [
        "# Scale-out throughput (`benchmarks/bench_scale.py`)",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} cores, flags {' '.join(m['flags'])}; load average at start "
        f"{m['load_avg_at_start']}. Measured {results['created']} in one run; compare within this run only.",
        "",
        "## vLLM engine vs HF engine (CPU)",
        "",
        "| engine | threads | base model, 16 prompts: tokens/s | default stack: s/question | seconds (all repeats) |",
        "|---|---:|---:|---:|---|",
    ]
    engines = results["engines"]
    for e in engines:
        if "error" in e:
            lines.append(f"| {e['backend']} | | failed: {e['error']} | | |")
            continue
        lines.append(
            f"| {e['backend']} | {e['threads']} | {e['gen_tokens_per_second']} | {e['stack_seconds_per_question']} "
            f"| gen {e['gen_seconds']}, stack {e['stack_seconds']} |"
        )
    ok = [e for e in engines if "error" not in e]
    if len(ok) == 2:
        hf, vl = ok
        lines += [
            "",
            f"Ratio {vl['backend']}/{hf['backend']}: generation tokens/s "
            f"{vl['gen_tokens_per_second'] / hf['gen_tokens_per_second']:.2f}x, stack seconds/question "
            f"{vl['stack_seconds_per_question'] / hf['stack_seconds_per_question']:.2f}x (lower is faster). "
            f"Identical generations: {sum(a == b for a, b in zip(hf['gen_texts'], vl['gen_texts']))}/{len(hf['gen_texts'])};"
            f" identical stack answers: {sum(a == b for a, b in zip(hf['answers'], vl['answers']))}/{len(hf['answers'])}.",
        ]
    r = results["ray"]
    lines += [
        "",
        "## Ray fan-out vs one process, I/O-bound HTTP teacher",
        "",
        f"A local server answers each request after {r['latency_seconds']} s (no work: a remote API's round trip); "
        f"each process or actor keeps the HTTP teacher's default {r['teacher_concurrency']} requests in flight. "
        f"Ray cluster start-up, once: {r['ray_startup_seconds']} s (not in the times below).",
        "",
        "| run | actors | records | seconds | records/s | speedup |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["runs"]:
        lines.append(
            f"| {row['run']} | {row['actors']} | {row['records']} | {row['seconds']} | "
            f"{row['records_per_second']} | {row['speedup']}x |"
        )
    write_atomic(out / "RESULTS.md", "\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if ok:
        axes[0].bar([e["backend"] for e in ok], [e["gen_tokens_per_second"] for e in ok], color="#4c72b0")
    axes[0].set_ylabel("tokens/s (16 prompts, greedy)")
    axes[0].set_title("base model generation, CPU")
    axes[1].bar([row["run"] for row in r["runs"]], [row["records_per_second"] for row in r["runs"]], color="#dd8452")
    axes[1].set_ylabel("records/s")
    axes[1].set_title(f"distill, HTTP teacher at {r['latency_seconds']} s latency")
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script works")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(engine_worker(args.worker, args.gen_tokens, args.questions, args.repeats)))
        return
    if args.smoke:
        args.gen_tokens, args.questions, args.repeats, args.records, args.latency = 8, 2, 1, 16, 0.05
    import tempfile

    results = {"machine": machine(), "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results["settings"] = {k: getattr(args, k) for k in ("gen_tokens", "questions", "repeats", "records", "latency")}
    results["engines"] = [run_engine(sys.executable, "hf", args), run_engine(args.vllm_python, "vllm", args)]
    with tempfile.TemporaryDirectory() as work:
        results["ray"] = ray_vs_single(args.records, args.latency, Path(work))
    write_report(results, args.out)
    print((args.out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
