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
    log_traces: bool = False
    log_db: Path | None = None
    api_key: str | None = None  # FSLM_API_KEY: bearer key `fslm serve` requires (None = open)

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests change env vars)."""
    get_settings.cache_clear()
