"""Server options: one validated object shared by `fslm serve` and `create_app`, so both speak the same limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fslm.errors import ConfigError
from fslm.settings import get_settings


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Dynamic batching: a batch closes at max_batch, after batch_wait_ms with no new arrival, or batch_max_wait_ms
    # after its first request, whichever comes first.
    max_batch: int = Field(16, ge=1, le=256)
    batch_wait_ms: float = Field(10.0, ge=0, le=10_000)
    batch_max_wait_ms: float = Field(100.0, ge=0, le=60_000)
    queue_size: int = Field(64, ge=1, le=100_000, description="requests waiting beyond this get 429 + Retry-After")
    # Limits on one request.
    max_prompt_tokens: int | None = Field(None, ge=1, description="default: the stack's max_prompt_tokens")
    max_new_tokens: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    request_timeout_s: float = Field(600.0, gt=0)
    # Traces.
    trace: bool = Field(True, description="include fslm_trace in responses unless the request says otherwise")
    trace_history: int = Field(200, ge=0, description="traces kept in memory for /ui and /v1/traces")
    persist_traces: bool | None = Field(None, description="append traces to SQLite; default: FSLM_LOG_TRACES")
    trace_db: Path | None = Field(None, description="default: FSLM_LOG_DB or <cache_dir>/serve_traces.sqlite")
    api_key: str | None = Field(None, description="default: FSLM_API_KEY; None = no key required")
    model_name: str | None = Field(None, description="the id clients send as `model`; default: the stack's name")

    def resolved_api_key(self) -> str | None:
        """The bearer key clients must send, or None (open). A key that is set but blank is refused: running open,
        or accepting an empty `Bearer `, when the user clearly meant to require a key would be the unsafe reading."""
        key, source = (
            (self.api_key, "api_key") if self.api_key is not None else (get_settings().api_key, "FSLM_API_KEY")
        )
        if key is not None and not key.strip():
            raise ConfigError(f"{source} is set but empty; give a real key, or unset it to serve without one")
        return key.strip() if key is not None else None

    def resolved_persist(self) -> bool:
        return self.persist_traces if self.persist_traces is not None else get_settings().log_traces

    def resolved_trace_db(self) -> Path:
        if self.trace_db is not None:
            return self.trace_db
        settings = get_settings()
        return settings.log_db or settings.cache_dir / "serve_traces.sqlite"
