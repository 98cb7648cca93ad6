"""Time to first token of `fslm serve`, for benchmarks/bench_serve.py: streamed requests sent one at a time.

For each prompt: one `stream: true` chat request, timing (client side) the first SSE event, the first `delta.content`
(time to first token: the earlier stages must finish before the answer stage's first token), and the end of the
stream; the stage events the server sends on the way are counted. With `answers` (the non-streamed answers of the same
prompts, e.g. from the sequential phase) it also checks that the streamed pieces join to the same text.
"""

from __future__ import annotations

import json
import statistics
import time

import httpx


def one_stream(client: httpx.Client, url: str, model: str, prompt: str, timeout: float) -> dict:
    """One streamed request: its timings, the text its pieces join to, and how many pieces and stage events came."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
    t0 = time.perf_counter()
    first_event = first_token = None
    pieces, stages, status, error = [], 0, -1, ""
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=timeout) as resp:
            status = resp.status_code
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                first_event = first_event or now
                data = json.loads(line[6:])
                if "error" in data:
                    error = data["error"].get("message", "")[:300]
                    continue
                if (data.get("fslm_event") or {}).get("status") == "stage":
                    stages += 1
                content = (data.get("choices") or [{}])[0].get("delta", {}).get("content")
                if content:
                    first_token = first_token or now
                    pieces.append(content)
    except httpx.HTTPError as err:
        error = f"{type(err).__name__}: {err}"
    t1 = time.perf_counter()
    return {
        "status": status if not error else -1,
        "error": error,
        "first_event_s": None if first_event is None else round(first_event - t0, 4),
        "ttft_s": None if first_token is None else round(first_token - t0, 4),
        "total_s": round(t1 - t0, 4),
        "pieces": len(pieces),
        "stage_events": stages,
        "text": "".join(pieces),
    }


def run_ttft(url: str, model: str, prompts: list[str], timeout: float, answers: dict[int, str] | None = None) -> dict:
    """Every prompt streamed alone, in order; the summary and each request's record."""
    records = []
    with httpx.Client() as client:
        for i, prompt in enumerate(prompts):
            rec = one_stream(client, url, model, prompt, timeout)
            rec["prompt_index"] = i
            if answers is not None and i in answers:
                rec["same_as_non_streamed"] = rec["text"] == answers[i]
            records.append(rec)
            print(f"  ttft {i}: {rec['ttft_s']} s of {rec['total_s']} s, {rec['pieces']} pieces", flush=True)
    return {"summary": summarize_ttft(records), "records": records}


def summarize_ttft(records: list[dict]) -> dict:
    """Median and spread of time to first token, and the share of the stream that came after it."""
    ok = [r for r in records if r["status"] == 200 and r["ttft_s"] is not None]
    ttft = sorted(r["ttft_s"] for r in ok)
    total = sorted(r["total_s"] for r in ok)
    same = [r["same_as_non_streamed"] for r in records if "same_as_non_streamed" in r]
    return {
        "requests": len(records),
        "ok": len(ok),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_min_s": ttft[0] if ttft else None,
        "ttft_max_s": ttft[-1] if ttft else None,
        "total_p50_s": round(statistics.median(total), 3) if total else None,
        "mean_pieces": round(statistics.mean(r["pieces"] for r in ok), 1) if ok else None,
        "mean_stage_events": round(statistics.mean(r["stage_events"] for r in ok), 1) if ok else None,
        "same_as_non_streamed": f"{sum(same)}/{len(same)}" if same else None,
    }


def ttft_lines(ttft: dict | None) -> list[str]:
    """table.md lines for the TTFT phase."""
    if not ttft:
        return []
    s = ttft["summary"]
    return [
        "",
        f"Time to first token (streamed, one request at a time, {s['ok']}/{s['requests']} ok): p50 {s['ttft_p50_s']} s "
        f"(min {s['ttft_min_s']}, max {s['ttft_max_s']}), whole stream p50 {s['total_p50_s']} s, "
        f"{s['mean_pieces']} pieces per answer, streamed text = non-streamed answer: {s['same_as_non_streamed']}.",
    ]
