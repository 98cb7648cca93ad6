"""The `endpoint:` block of a stage or of a whole stack: run those model stages on an OpenAI-compatible server (vLLM,
llama-server, Ollama, a hosted API, `fslm serve`) through the "openai" engine (fslm/engine/endpoint.py). Validated
without contacting the network: `fslm stack validate` never sends a request."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class EndpointConfig(BaseModel):
    """Where and how to reach the server. The API key is never written here: `api_key_env` names the environment
    variable that holds it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., description="the API root, e.g. http://127.0.0.1:8000/v1 (http or https)")
    model: str | None = Field(
        None,
        min_length=1,
        description="the model name the server serves (GET /v1/models); default: the stage's `model`, else the "
        "stack's base_model. A stage with an `adapter` asks for the model named like the stage instead",
    )
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the API key")
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds one request may take (a stall is retried)")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    attempts: int = Field(4, ge=1, le=20, description="tries per request on 5xx, 429, dropped connections, stalls")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL such as http://127.0.0.1:8000/v1")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  # a port that is not a number raises here
        except ValueError as err:
            raise ValueError(f"not a valid URL ({err})") from None
        if not parts.hostname or any(c.isspace() for c in value):
            raise ValueError("expected an http(s) URL with a host and no spaces, such as http://127.0.0.1:8000/v1")
        if parts.query or parts.fragment:
            raise ValueError("the API root takes no ?query or #fragment")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            raise ValueError("expected the NAME of an environment variable (letters, digits, _), not the key itself")
        return value

    def served_model(self, model: str) -> str:
        """The model name requests ask for, given the stage's model reference."""
        return self.model or model

    def ref(self, model: str) -> str:
        """The engine's model reference (as `fslm.engine.endpoint.endpoint_ref` names it): served name @ URL."""
        return f"{self.served_model(model)}@{self.base_url}"

    def engine_options(self) -> dict:
        """Keyword options for `load_engine(served_model, backend="openai", **options)`."""
        return {
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "timeout": self.timeout,
            "concurrency": self.concurrency,
            "attempts": self.attempts,
        }


def load_stack_engine(cfg, ref: str, *, backend: str | None = None, dtype: str | None = None):
    """The engine for engine reference `ref` of stack `cfg` (`StackConfig.models`): the "openai" engine for a
    reference on an endpoint (a `--engine` override does not move it off the server), else a local model on
    `backend` (default: the stack's `engine:`)."""
    from fslm.engine import load_engine

    served = cfg.endpoint_engines().get(ref)
    if served is not None:
        model, endpoint = served
        return load_engine(model, backend="openai", **endpoint.engine_options())
    return load_engine(ref, dtype=dtype or cfg.dtype, backend=backend or cfg.engine)
