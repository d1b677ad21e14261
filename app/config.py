"""All settings in one place, read from environment variables (prefix STORYLOOP_) or a .env file."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORYLOOP_", env_file=".env", extra="ignore")

    # Where everything lives: the SQLite file (by default) and the model store.
    data_dir: Path = Path("data")
    # SQLAlchemy URL; empty means a SQLite file in data_dir. PostgreSQL: postgresql+psycopg://user:pw@host/db
    database_url: str = ""
    # Signs session cookies. Set it in production; the default is only for a local demo.
    secret_key: str = "dev-only-change-me"
    # Cookies only over HTTPS (set true behind TLS).
    secure_cookies: bool = False

    # Annotation
    annotations_per_tuple: int = Field(3, ge=1, description="R: annotations wanted per task")
    lease_seconds: int = Field(600, ge=10, description="how long a fetched task stays reserved")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    tuple_size: int = 4
    design_factor: float = 2.0

    # Trainer: when a round starts by itself. "newest": once trainer_min_newest_judgements judgements
    # have arrived on the newest round's tuples (each round learns from judgements of the previous
    # round's own stories); "any": once trainer_min_new_judgements judgements of any batch arrived
    # since the last round (and at least trainer_min_new_fraction of those it used).
    trainer_poll_seconds: float = 30.0
    trainer_trigger: Literal["newest", "any"] = "newest"
    trainer_min_newest_judgements: int = Field(60, ge=1)
    trainer_min_new_judgements: int = 30
    trainer_min_new_fraction: float = 0.0

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'storyloop.db').resolve()}"

    @property
    def model_store(self) -> Path:
        return self.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
