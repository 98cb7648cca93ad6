"""Load test for `fslm serve`: 16 concurrent clients vs the same requests sent one at a time, same server, same run.

    .venv/bin/python benchmarks/bench_serve.py --threads 1          # default stack, 16 clients x 60 s
    .venv/bin/python benchmarks/bench_serve.py --duration 20 --clients 8 --seq-cap 120   # quicker look

Starts `fslm serve` on a free 127.0.0.1 port, warms it up, then runs two bounded phases:
1. concurrent: --clients threads send prompts (Alpaca seed instructions, in order) for --duration seconds;
2. sequential: ONE client sends exactly the prompts phase 1 completed, one at a time (stops at --seq-cap seconds).
3. ttft: --ttft prompts (default 8), each streamed alone (`stream: true`): time to the first answer token, the whole
   stream, and whether the streamed pieces join to the sequential phase's answer (benchmarks/serve_ttft.py).
   `--ttft-only` runs just this phase and writes ttft.json.
No phase starts a request after its deadline; requests already sent are awaited, so nothing is lost. Ratios are
reported three ways: requests/s, generated tokens/s, and requests per second of server CPU time (robust to other jobs
on a shared CPU). Each phase is saved as it finishes; --resume reuses saved phases.
Outputs in --out: summary.json, items.jsonl, table.md, chart.png, server.log.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_ttft import run_ttft, ttft_lines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serve"


def load_prompts(limit: int) -> list[str]:
    """Real instructions (Alpaca seed tasks, in file order), short enough for a small model."""
    sys.path.insert(0, str(ROOT))
    from fslm.settings import get_settings

    path = get_settings().data_dir / "alpaca" / "seed_tasks.jsonl"
    prompts = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            task = json.loads(line)
            extra = task["instances"][0]["input"].strip() if task.get("instances") else ""
            text = task["instruction"].strip() + (f"\n\n{extra}" if extra else "")
            if len(text) <= 400:
                prompts.append(text)
            if len(prompts) >= limit:
                break
    return prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadSampler:
    """Samples the 1-minute load average every few seconds while a phase runs."""

    def __init__(self, every: float = 5.0):
        self.every, self.values, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.values.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def one_request(client: httpx.Client, url: str, model: str, prompt: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    try:
        resp = client.post(url + "/v1/chat/completions", json=body, timeout=timeout)
        status, data = (
            resp.status_code,
            (resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}),
        )
    except httpx.HTTPError as err:  # counted as a lost request
        status, data = -1, {"error": {"message": f"{type(err).__name__}: {err}"}}
    t1 = time.perf_counter()
    rec = {"status": status, "latency": t1 - t0, "t_start": t0, "t_end": t1}
    if status == 200:
        trace = data.get("fslm_trace") or {}
        rec.update(
            answer=data["choices"][0]["message"]["content"],
            completion_tokens=data["usage"]["completion_tokens"],
            prompt_tokens=data["usage"]["prompt_tokens"],
            batch_size=trace.get("batch_size"),
            queue_seconds=trace.get("queue_seconds"),
        )
    else:
        rec["error"] = (data.get("error") or {}).get("message", "")[:300]
    return rec


def run_phase(
    name: str,
    url: str,
    model: str,
    prompts: list[str],
    clients: int,
    duration: float,
    timeout: float,
    pid: int,
    indices: list[int] | None = None,
) -> dict:
    """`clients` threads draw prompt indices in order (`indices`, or 0, 1, 2... cycling) until `duration` has passed."""
    order = indices if indices is not None else None
    counter = itertools.count()
    lock = threading.Lock()
    records: list[dict] = []
    ready = threading.Barrier(clients + 1)
    start = deadline = 0.0

    def client_loop(cid: int):
        with httpx.Client() as client:
            client.get(url + "/health", timeout=30)  # open the keep-alive connection before the clock starts
            ready.wait()
            while time.perf_counter() < deadline:
                with lock:
                    n = next(counter)
                if order is not None and n >= len(order):
                    break
                i = order[n] if order is not None else n % len(prompts)
                rec = one_request(client, url, model, prompts[i], timeout)
                rec.update(phase=name, client=cid, prompt_index=i)
                with lock:
                    records.append(rec)

    cpu0 = cpu_seconds(pid)
    with LoadSampler() as load:
        threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
        for t in threads:
            t.start()
        start = time.perf_counter()
        deadline = start + duration
        ready.wait()  # all clients send their first request together
        for t in threads:
            t.join(duration + timeout + 60)
    wall = time.perf_counter() - start
    sent = len(records) + sum(t.is_alive() for t in threads)  # a thread still waiting holds one unanswered request
    for r in records:
        r["t_start"], r["t_end"] = round(r["t_start"] - start, 3), round(r["t_end"] - start, 3)
    return {
        "name": name,
        "clients": clients,
        "duration_s": duration,
        "wall_s": wall,
        "sent": sent,
        "records": records,
        "server_cpu_s": cpu_seconds(pid) - cpu0,
        "loadavg_1m": load.values,
    }


def summarize(phases: list[dict]) -> dict:
    recs = [r for p in phases for r in p["records"]]
    ok = [r for r in recs if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    wall = sum(p["wall_s"] for p in phases)
    loads = [v for p in phases for v in p["loadavg_1m"]]
    sizes = [r["batch_size"] for r in ok if r.get("batch_size")]

    def pct(q):  # nearest rank
        return round(lat[max(0, math.ceil(q * len(lat)) - 1)], 3) if lat else None

    return {
        "clients": phases[0]["clients"],
        "wall_s": round(wall, 2),
        "sent": sum(p["sent"] for p in phases),
        "completed_200": len(ok),
        "status_429": sum(r["status"] == 429 for r in recs),
        "status_4xx_other": sum(400 <= r["status"] < 500 and r["status"] != 429 for r in recs),
        "status_5xx": sum(r["status"] >= 500 for r in recs),
        "lost": sum(p["sent"] for p in phases) - len(recs) + sum(r["status"] == -1 for r in recs),
        "throughput_rps": round(len(ok) / wall, 4) if wall else 0.0,
        "generated_tokens_per_s": round(sum(r["completion_tokens"] for r in ok) / wall, 2) if wall else 0.0,
        "latency_p50_s": pct(0.50),
        "latency_p95_s": pct(0.95),
        "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "mean_batch_size": round(statistics.fmean(sizes), 2) if sizes else None,
        "server_cpu_cores_used": round(sum(p["server_cpu_s"] for p in phases) / wall, 2) if wall else None,
        "requests_per_server_cpu_s": round(len(ok) / max(sum(p["server_cpu_s"] for p in phases), 1e-9), 4),
        "loadavg_1m_mean": round(statistics.fmean(loads), 2) if loads else None,
        "loadavg_1m_max": round(max(loads), 2) if loads else None,
    }


def start_server(args, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from fslm.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
        "--batch-max-wait-ms",
        str(args.batch_max_wait_ms),
        "--queue-size",
        str(args.queue_size),
        "--trace-history",
        "50",
        "--no-log",
        "--log-level",
        "warning",
    ]
    if args.stack:
        cmd += ["--stack", args.stack]
    if args.engine:
        cmd += ["--engine", args.engine]
    if args.no_join:
        cmd += ["--no-join-running"]
    env = {**os.environ, "FSLM_LOG_TRACES": "false"}
    if args.threads:
        env["FSLM_THREADS"] = str(args.threads)
    env.pop("FSLM_API_KEY", None)
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}; see its log")
        try:
            resp = httpx.get(url + "/health", timeout=2)
            if resp.status_code == 200:
                return resp.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"server not healthy after {timeout:.0f} s")


def bound_lines(bound: dict | None) -> list[str]:
    if not bound:
        return []
    c = bound["components"]
    return [
        f"**Upper bound for this workload: {bound['max_ratio']}x.** Measured in the same setup ({c['threads']} thread(s)): "
        f"prefill {c['prefill_tokens_per_s_b1']} tok/s at batch 1 and {c['prefill_tokens_per_s_b16']} at batch 16 "
        f"(compute-bound: batching makes it only {c['prefill_tokens_per_s_b16'] / c['prefill_tokens_per_s_b1']:.1f}x cheaper per token); a decode step {c['decode_step_ms_b1']} ms at batch 1 and "
        f"{c['decode_step_ms_b16']} ms at batch 16. The {bound['requests']} requests process {bound['prompt_tokens']} "
        f"stage-input tokens and generate {bound['completion_tokens']}: modeled sequential {bound['modeled_sequential_s']} s "
        f"(measured {bound['measured_sequential_s']} s); perfect batching (every step 16 live rows, no padding) would still "
        f"take {bound['ideal_batched_s']} s, {bound['prefill_share_of_ideal']:.0%} of it prefill.",
        "",
    ]


def component_costs(threads: int, stack: str | None) -> dict:
    """Time the two kinds of work a stack request is made of, with the server's thread count: prefill (compute-bound,
    so batching cannot make it cheaper per token) and one decode step at batch 1 and at batch 16."""
    import torch

    from fslm.stack import Stack

    if threads:
        os.environ["FSLM_THREADS"] = str(threads)
    engine = Stack.load(stack, backend="hf").engine  # None: the packaged default stack, as the server uses
    model, costs = engine.base, {"threads": torch.get_num_threads()}
    with torch.inference_mode():
        for batch in (1, 16):
            ids = torch.randint(1000, 30000, (batch, 100))
            model(input_ids=ids[:, :8])  # warm-up
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            costs[f"prefill_tokens_per_s_b{batch}"] = round(batch * 100 / (time.perf_counter() - t0), 1)
            cache, token, steps = out.past_key_values, ids[:, -1:], 16
            t0 = time.perf_counter()
            for _ in range(steps):
                cache = model(input_ids=token, past_key_values=cache, use_cache=True).past_key_values
            costs[f"decode_step_ms_b{batch}"] = round((time.perf_counter() - t0) / steps * 1000, 1)
    return costs


def throughput_bound(summary: dict, records: list[dict], costs: dict) -> dict:
    """The best concurrent/sequential ratio these component costs allow for this run's requests: sequential pays
    prefill + one batch-1 step per generated token; ideal batching pays the same prefill + 1/16 of a batch-16 step
    per token (every step full, no finished rows, no padding)."""
    ok = [r for r in records if r["phase"] == "sequential" and r["status"] == 200]
    tokens_in, tokens_out = sum(r["prompt_tokens"] for r in ok), sum(r["completion_tokens"] for r in ok)
    prefill_s = tokens_in / costs["prefill_tokens_per_s_b16"]
    sequential_s = tokens_in / costs["prefill_tokens_per_s_b1"] + tokens_out * costs["decode_step_ms_b1"] / 1000
    ideal_s = prefill_s + tokens_out * costs["decode_step_ms_b16"] / 16 / 1000
    return {
        "components": costs,
        "requests": len(ok),
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "modeled_sequential_s": round(sequential_s, 1),
        "measured_sequential_s": summary["sequential"]["wall_s"],
        "ideal_batched_s": round(ideal_s, 1),
        "prefill_share_of_ideal": round(prefill_s / ideal_s, 3),
        "max_ratio": round(sequential_s / ideal_s, 2),
    }


def write_outputs(out: Path, summary: dict, phases: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def atomic(name: str, text: str):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)

    atomic("summary.json", json.dumps(summary, indent=2) + "\n")
    atomic(
        "items.jsonl", "".join(json.dumps({k: v for k, v in r.items()}) + "\n" for p in phases for r in p["records"])
    )
    s, c = summary["sequential"], summary["concurrent"]
    rows = [
        ("requests completed (200)", "completed_200"),
        ("5xx", "status_5xx"),
        ("429", "status_429"),
        ("lost", "lost"),
        ("wall time (s)", "wall_s"),
        ("throughput (req/s)", "throughput_rps"),
        ("generated tokens/s", "generated_tokens_per_s"),
        ("latency p50 (s)", "latency_p50_s"),
        ("latency p95 (s)", "latency_p95_s"),
        ("mean batch size", "mean_batch_size"),
        ("server CPU cores used", "server_cpu_cores_used"),
        ("requests per server CPU-second", "requests_per_server_cpu_s"),
        ("machine load avg (1 min, mean)", "loadavg_1m_mean"),
    ]
    lines = [
        f"# fslm serve load test (stack {summary['stack']}, {summary['machine']['cpus']} CPUs, "
        f"torch threads: {summary['machine']['torch_threads']})",
        "",
        f"| | sequential (1 client) | concurrent ({c['clients']} clients) |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {s[key]} | {c[key]} |" for label, key in rows]
    st = summary["settings"]
    lines += [
        "",
        f"**Throughput ratio (concurrent / sequential): {summary['throughput_ratio']}x** "
        f"(goal >= {summary['goal_ratio']}x: {'met' if summary['goal_met'] else 'NOT met'}); "
        f"generated tokens/s ratio {summary['tokens_per_s_ratio']}x; per server CPU-second {summary['per_cpu_second_ratio']}x.",
        f"Sequential phase: {summary['sequential_covered']}. Identical answers for prompts served in both modes: "
        f"{summary['same_answer_rate']}.",
        "",
        *bound_lines(summary.get("bound")),
        *ttft_lines(summary.get("ttft")),
        f"Settings: {st['clients']} clients for {st['duration_s']:.0f} s, max_batch={st['max_batch']}, "
        f"batch_wait_ms={st['batch_wait_ms']}, batch_max_wait_ms={st['batch_max_wait_ms']}, queue_size={st['queue_size']}, "
        f"join_running={st.get('join_running', False)}. Generated {summary['generated_at']}.",
        "",
    ]
    atomic("table.md", "\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        axes[0].bar(
            ["sequential", f"{c['clients']} clients"],
            [s["throughput_rps"], c["throughput_rps"]],
            color=["#98a2b3", "#4f46e5"],
        )
        axes[0].set_title(f"throughput (req/s), ratio {summary['throughput_ratio']}x")
        lats = {
            name: [r["latency"] for p in phases if p["name"] == name for r in p["records"] if r["status"] == 200]
            for name in ("sequential", "concurrent")
        }
        top = max((max(v) for v in lats.values() if v), default=1.0) * 1.05
        bins = [top * i / 40 for i in range(41)]  # shared bins, so a tight cluster stays visible
        for (name, lat), color in zip(lats.items(), ("#98a2b3", "#4f46e5")):
            axes[1].hist(lat, bins=bins, alpha=0.8, color=color, label=f"{name} (n={len(lat)})")
        axes[1].set_title("latency per request (s)")
        axes[1].set_ylabel("requests")
        axes[1].legend()
        fig.tight_layout()
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".chart.", suffix=".png")
        os.close(fd)
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / "chart.png")
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", default=None, help="stack YAML (default: the packaged default stack)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds the concurrent clients keep sending")
    ap.add_argument("--seq-cap", type=float, default=1200.0, help="at most this many seconds of sequential sending")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--batch-max-wait-ms", type=float, default=100.0)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=64, help="distinct prompts cycled through, in order")
    ap.add_argument(
        "--timeout", type=float, default=900.0, help="per-request client timeout (the server gives up at 600 s)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="FSLM_THREADS for the server (0 = torch default); 1 avoids OpenMP oversubscription on a busy CPU",
    )
    ap.add_argument("--engine", default=None, help="the server's --engine (default: the stack's own engine:)")
    ap.add_argument(
        "--engine-summary",
        type=Path,
        default=None,
        help="also write this run's throughput ratio as serve_ratio into this engine summary.json",
    )
    ap.add_argument(
        "--no-join", action="store_true", help="serve with --no-join-running (groups never join running ones)"
    )
    ap.add_argument("--goal", type=float, default=5.0)
    ap.add_argument("--ttft", type=int, default=8, help="streamed requests timed for time to first token (0: none)")
    ap.add_argument("--ttft-only", action="store_true", help="start the server and run only the TTFT phase")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--resume", action="store_true", help="reuse phases saved by an interrupted run")
    ap.add_argument(
        "--keep-phases",
        action="store_true",
        help="keep the saved phases after writing results (another run's --resume can reuse its sequential phase)",
    )
    ap.add_argument(
        "--bound-only",
        action="store_true",
        help="only (re)measure component costs and the ratio bound for the saved run",
    )
    ap.add_argument(
        "--replot", action="store_true", help="only rebuild table.md and chart.png from summary.json + items.jsonl"
    )
    args = ap.parse_args()
    if args.bound_only:
        summary = json.loads((args.out / "summary.json").read_text())
        records = [json.loads(line) for line in (args.out / "items.jsonl").open()]
        summary["bound"] = throughput_bound(summary, records, component_costs(args.threads, args.stack))
        phases = [
            {"name": name, "records": [r for r in records if r["phase"] == name]}
            for name in ("concurrent", "sequential")
        ]
        write_outputs(args.out, summary, phases)
        print(json.dumps(summary["bound"], indent=2))
        return
    if args.replot:
        summary = json.loads((args.out / "summary.json").read_text())
        records = [json.loads(line) for line in (args.out / "items.jsonl").open()]
        phases = [
            {"name": name, "records": [r for r in records if r["phase"] == name]}
            for name in ("concurrent", "sequential")
        ]
        write_outputs(args.out, summary, phases)
        return

    # `timeout`/kill send SIGTERM: turn it into SystemExit so the `finally` below stops the server we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prompts = load_prompts(args.prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port, args.out / "server.log")
    phases: dict[str, dict] = {}
    try:
        t_load = time.perf_counter()
        health = wait_healthy(url, proc, 600)
        load_s = time.perf_counter() - t_load
        print(f"server up in {load_s:.1f} s: {health['model']} {[s['name'] for s in health['stages']]}", flush=True)
        warm = one_request(httpx.Client(), url, health["model"], prompts[-1], args.timeout)
        print(f"warm-up request: {warm['status']} in {warm['latency']:.1f} s", flush=True)
        if args.ttft_only:
            ttft = run_ttft(url, health["model"], prompts[: args.ttft], args.timeout)
            (args.out / "ttft.json").write_text(json.dumps(ttft, indent=2) + "\n")
            print(json.dumps(ttft["summary"]))
            return
        for name in ("concurrent", "sequential"):
            saved = args.out / f".phase_{name}.json"
            if args.resume and saved.exists():
                phases[name] = json.loads(saved.read_text())
                print(f"{name}: reused {saved}", flush=True)
                continue
            if name == "concurrent":
                clients, duration, indices = args.clients, args.duration, None
            else:  # exactly the prompts the concurrent phase answered, in index order
                clients, duration = 1, args.seq_cap
                indices = sorted(r["prompt_index"] for r in phases["concurrent"]["records"] if r["status"] == 200)
            print(f"{name}: {clients} client(s), up to {duration:.0f} s, load avg {os.getloadavg()[0]:.2f}", flush=True)
            phase = run_phase(name, url, health["model"], prompts, clients, duration, args.timeout, proc.pid, indices)
            saved.write_text(json.dumps(phase))
            phases[name] = phase
            part = summarize([phase])
            print(
                f"  {part['completed_200']} ok, {part['status_5xx']} 5xx, {part['lost']} lost, {part['throughput_rps']} req/s, "
                f"p50 {part['latency_p50_s']} s, p95 {part['latency_p95_s']} s, batch {part['mean_batch_size']}, "
                f"server CPU {part['server_cpu_cores_used']} cores, load {part['loadavg_1m_mean']}",
                flush=True,
            )
        ttft = None
        if args.ttft:
            answers = {r["prompt_index"]: r["answer"] for r in phases["sequential"]["records"] if r["status"] == 200}
            print(f"ttft: {args.ttft} streamed requests, one at a time", flush=True)
            ttft = run_ttft(url, health["model"], prompts[: args.ttft], args.timeout, answers)
        metrics_text = httpx.get(url + "/metrics", timeout=10).text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    seq, conc = summarize([phases["sequential"]]), summarize([phases["concurrent"]])
    seq_answers = {r["prompt_index"]: r["answer"] for r in phases["sequential"]["records"] if r["status"] == 200}
    both = [
        (seq_answers[r["prompt_index"]], r["answer"])
        for r in phases["concurrent"]["records"]
        if r["status"] == 200 and r["prompt_index"] in seq_answers
    ]

    def ratio(key):
        return round(conc[key] / seq[key], 2) if seq[key] else None

    summary = {
        "stack": health["model"],
        "stages": [s["name"] for s in health["stages"]],
        "settings": {
            "max_batch": args.max_batch,
            "batch_wait_ms": args.batch_wait_ms,
            "batch_max_wait_ms": args.batch_max_wait_ms,
            "queue_size": args.queue_size,
            "clients": args.clients,
            "duration_s": args.duration,
            "seq_cap_s": args.seq_cap,
            "prompts": len(prompts),
            "engine": args.engine or "the stack's engine:",
            "join_running": not args.no_join,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads or "default",
            "note": "CPU shared with other workloads; see loadavg and server_cpu_cores_used",
        },
        "server_load_seconds": round(load_s, 1),
        "concurrent": conc,
        "sequential": seq,
        "sequential_covered": f"{seq['completed_200']}/{conc['completed_200']} of the concurrent phase's prompts",
        "throughput_ratio": ratio("throughput_rps"),
        "tokens_per_s_ratio": ratio("generated_tokens_per_s"),
        "per_cpu_second_ratio": ratio("requests_per_server_cpu_s"),
        "goal_ratio": args.goal,
        "zero_5xx": seq["status_5xx"] + conc["status_5xx"] == 0,
        "no_lost_requests": seq["lost"] + conc["lost"] == 0,
        "same_answer_rate": f"{sum(a == b for a, b in both)}/{len(both)}",
        "server_batch_metrics": [
            line for line in metrics_text.splitlines() if line.startswith("fslm_batch_size_") and "bucket" not in line
        ],
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ttft": None if ttft is None else {"summary": ttft["summary"], "records": ttft["records"]},
        "server_ttft_metrics": [
            line for line in metrics_text.splitlines() if line.startswith("fslm_time_to_first_token_seconds_")
        ],
    }
    summary["goal_met"] = bool(summary["throughput_ratio"] and summary["throughput_ratio"] >= args.goal)
    ordered = [phases["concurrent"], phases["sequential"]]
    if args.engine == "hf":  # the component costs time the HF model's forward passes
        summary["bound"] = throughput_bound(
            summary, [r for p in ordered for r in p["records"]], component_costs(args.threads, args.stack)
        )
    write_outputs(args.out, summary, ordered)
    if args.engine_summary is not None and args.engine_summary.exists():
        engine_summary = json.loads(args.engine_summary.read_text())
        engine_summary["serve_ratio"] = summary["throughput_ratio"]
        args.engine_summary.write_text(json.dumps(engine_summary, indent=2) + "\n")
    for name in phases if not args.keep_phases else ():
        (args.out / f".phase_{name}.json").unlink(missing_ok=True)
    keys = (
        "throughput_ratio",
        "tokens_per_s_ratio",
        "per_cpu_second_ratio",
        "goal_met",
        "zero_5xx",
        "no_lost_requests",
        "same_answer_rate",
    )
    print(json.dumps({k: summary[k] for k in keys}))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
