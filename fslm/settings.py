"""All environment-driven settings live here; nothing else reads os.environ."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    # The repo lives beside ../shared in this workplace; users point FSLM_DATA_DIR elsewhere.
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FSLM_", extra="ignore")

    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "fslm")
    data_dir: Path = Field(default_factory=_default_data_dir)
    threads: int = 0  # 0 = leave torch's default
    # The run log (fslm/logs, `fslm logs`): every `fslm run`, `fslm generate` and `fslm serve` request. FSLM_LOG=0
    # turns it off; FSLM_LOG_DB moves it (default <cache_dir>/logs.db); texts longer than FSLM_LOG_MAX_CHARS are
    # stored cut, with a marker (docs/logs.md says why).
    log: bool = True
    log_db: Path | None = None
    log_max_chars: int = Field(100_000, ge=1_000)
    # Deprecated: the server once kept its traces in a file of their own only when this was true; it now writes to
    # the run log, and FSLM_LOG_TRACES=0 still keeps it from doing so.
    log_traces: bool | None = None
    # FSLM_API_KEY: bearer key `fslm serve` requires. Unset = open; set but blank = `fslm serve` refuses to start
    # (exit 2): someone meant to require a key, and an empty one would let `Authorization: Bearer ` through.
    api_key: str | None = None
    # FSLM_ALLOWED_HOSTS: comma-separated Host names `fslm serve` answers to (default: loopback names on a loopback
    # bind, any otherwise; "*" = any). Behind a proxy that forwards the public Host header, list that name here.
    allowed_hosts: str | None = None

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def log_path(self) -> Path:
        return self.log_db or self.cache_dir / "logs.db"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests change env vars)."""
    get_settings.cache_clear()
