"""Server options: one validated object shared by `fslm serve` and `create_app`, so both speak the same limits."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fslm.errors import ConfigError
from fslm.settings import get_settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    join_running: bool = Field(
        True,
        description="continuous batching: requests that arrive while others run join them at the next stage "
        "boundary (off: a new group starts when the running ones have finished); 1.10x the throughput on the HF "
        "engine, benchmarks/results/serve/join-rowlora/RESULTS.md",
    )
    # Limits on one request.
    max_prompt_tokens: int | None = Field(None, ge=1, description="default: the stack's max_prompt_tokens")
    max_new_tokens: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    request_timeout_s: float = Field(600.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this, else 408")
    # Traces.
    trace: bool = Field(True, description="include fslm_trace in responses unless the request says otherwise")
    trace_history: int = Field(200, ge=0, description="traces kept in memory (what /ui shows with the log off)")
    log: bool | None = Field(None, description="write every request to the run log (fslm logs); default: FSLM_LOG")
    log_db: Path | None = Field(None, description="the run log file; default: FSLM_LOG_DB or <cache_dir>/logs.db")
    persist_traces: bool | None = Field(None, description="deprecated alias of `log` (traces now go to the run log)")
    trace_db: Path | None = Field(None, description="deprecated alias of `log_db`")
    api_key: str | None = Field(None, description="default: FSLM_API_KEY; None = no key required")
    model_name: str | None = Field(None, description="the id clients send as `model`; default: the stack's name")
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header names answered (a DNS-rebinding guard; '*' = any). None: create_app answers any "
        "(whoever hosts it binds it); serve() / `fslm serve` use resolved_allowed_hosts()",
    )

    def resolved_api_key(self) -> str | None:
        """The bearer key clients must send, or None (open). A key that is set but blank is refused: running open,
        or accepting an empty `Bearer `, when the user clearly meant to require a key would be the unsafe reading.
        So is a key with control characters (a pasted newline inside it): no HTTP client can send it in a header,
        so the server would refuse everyone while looking configured. Surrounding whitespace is dropped."""
        key, source = (
            (self.api_key, "api_key") if self.api_key is not None else (get_settings().api_key, "FSLM_API_KEY")
        )
        if key is None:
            return None
        key = key.strip()
        if not key:
            raise ConfigError(f"{source} is set but empty; give a real key, or unset it to serve without one")
        if not key.isprintable():
            raise ConfigError(f"{source} holds control characters, which no HTTP header can carry; set it again")
        return key

    def resolved_allowed_hosts(self) -> list[str]:
        """What serve() guards with: allowed_hosts if set, else FSLM_ALLOWED_HOSTS (comma-separated), else, for a
        loopback bind (the default), the loopback names only, which is what stops a DNS-rebinding page; a server
        bound to another interface is reached under names fslm cannot guess, so it answers any."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        env = get_settings().allowed_hosts
        if env is not None and env.strip():
            return [name.strip() for name in env.split(",") if name.strip()]
        return [*LOOPBACK_NAMES, self.host] if _is_loopback(self.host) else ["*"]

    def resolved_log(self) -> bool:
        """Whether requests go to the run log: `log` (or its old name `persist_traces`) if set, else FSLM_LOG, which
        FSLM_LOG_TRACES=0 (the old opt-in's name, set to off) also turns off for the server."""
        for choice in (self.log, self.persist_traces):
            if choice is not None:
                return choice
        settings = get_settings()
        return settings.log and settings.log_traces is not False

    def resolved_log_db(self) -> Path:
        return self.log_db or self.trace_db or get_settings().log_path
