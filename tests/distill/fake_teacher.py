"""A real OpenAI-style chat-completions server that misbehaves on purpose: HTTP 500s, slow answers, dropped connections.

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
