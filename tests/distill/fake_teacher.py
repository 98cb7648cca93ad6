"""Real OpenAI-style chat-completions servers for tests: one misbehaves on purpose (HTTP 500s, slow answers, dropped
connections), one plays a self-instruct teacher (SelfInstructTeacher).

Each distinct request gets a fixed list of faults (chosen by its hash) for its first attempts, then a normal answer,
so a client that retries correctly ends with exactly one good answer per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

PLANS = [[], ["500"], ["slow"], ["drop"], ["500", "drop"], ["slow", "500"], ["drop", "slow", "500"]]


class FaultyTeacher:
    def __init__(self, *, slow_seconds: float = 1.5, api_key: str | None = None, status: int | None = None):
        self.slow_seconds = slow_seconds
        self.api_key = api_key
        self.status = status  # answer every request with this HTTP status (non-retryable error tests)
        self.attempts: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.app = self._build()

    @staticmethod
    def key(messages) -> str:
        return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()

    def plan(self, key: str) -> list[str]:
        return PLANS[int(key[:8], 16) % len(PLANS)]

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            if self.status:
                return JSONResponse({"error": {"message": "nope"}}, status_code=self.status)
            body = await request.json()
            key = self.key(body["messages"])
            attempt = self.attempts[key]
            self.attempts[key] += 1
            faults = self.plan(key)
            if attempt < len(faults):
                kind = faults[attempt]
                self.injected[kind] += 1
                if kind == "500":
                    return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
                if kind == "slow":
                    await asyncio.sleep(self.slow_seconds)  # longer than the client's timeout: it has hung up
                    return self._answer(key, body)
                return StreamingResponse(self._dropped(), media_type="application/json")
            self.served[key] += 1
            self.bodies.append(body)
            return self._answer(key, body)

        return app

    @staticmethod
    def _answer(key: str, body: dict) -> JSONResponse:
        text = f"fact {int(key[:6], 16) % 10}"
        return JSONResponse(
            {
                "id": f"chatcmpl-{key[:12]}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            }
        )

    @staticmethod
    async def _dropped():
        yield b'{"id": "chatcmpl-partial", "choi'
        raise ConnectionResetError("injected: connection dropped mid-body")


WORDS = (
    "river apple lantern quartz violin harbor meadow copper falcon glacier orchard pepper saddle tunnel velvet walnut "
    "anchor basket candle desert engine feather garden hammer island jacket kettle ladder marble needle ocean pillow "
    "rocket silver thunder umbrella valley window yogurt zebra bridge castle dragon forest planet summer winter"
).split()
VERBS = ("Explain", "Describe", "Summarize", "Compare", "List", "Classify", "Suggest", "Rewrite")


class SelfInstructTeacher:
    """A real OpenAI-style server playing a self-instruct teacher, deterministic in (messages, seed) like a seeded
    sampler. Asked for a task list it answers numbered instructions made of words drawn by hash, plus, every time,
    one near-copy of the first task it was shown, one banned-word task ("Draw a picture...") and one starting with
    punctuation, so every filter has work. Asked for an instance it answers "Input: ...\\nOutput: ..."."""

    def __init__(self):
        self.requests = 0
        self.app = self._build()

    @staticmethod
    def _words(key: str, i: int, n: int) -> list[str]:
        h = hashlib.sha256(f"{key}:{i}".encode()).digest()
        return [WORDS[b % len(WORDS)] for b in h[1 : 1 + n]]

    def reply(self, messages: list[dict], seed) -> str:
        key = hashlib.sha1(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()
        user = messages[-1]["content"]
        if user.startswith("Come up with a series of tasks:"):
            shown = [line.split(". ", 1)[1] for line in user.split("\n")[1:] if ". " in line and line[0].isdigit()]
            start = len(shown) + 1
            lines = [f"{start}. {shown[0].rstrip('.?')} please."]  # a near-duplicate of an example: dropped
            lines.append(f"{start + 1}. Draw a picture of a {self._words(key, 0, 1)[0]}.")  # banned word: dropped
            lines.append(f"{start + 2}. - {' '.join(self._words(key, 1, 5))}")  # leading punctuation: dropped
            for i in range(3, 8):
                verb = VERBS[hashlib.sha256(f"{key}:v{i}".encode()).digest()[0] % len(VERBS)]
                lines.append(f"{start + i}. {verb} the {' '.join(self._words(key, i, 6))}.")
            return "\n".join(lines)
        task = user.rsplit("Task: ", 1)[1]
        if "walnut" in task:  # an instance answer with no output: dropped as a bad instance
            return "Input: <noinput>"
        words = self._words(key, 99, 4)
        return f"Input: {words[0]} {words[1]}\nOutput: The {words[2]} and the {words[3]}."

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests += 1
            text = self.reply(body["messages"], body.get("seed"))
            return JSONResponse(
                {
                    "id": "chatcmpl-synth",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
                }
            )

        return app
