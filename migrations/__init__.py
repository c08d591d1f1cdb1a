"""Alembic environment; `upgrade(settings)` is what `corral migrate` runs."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from store.settings import Settings

HERE = Path(__file__).resolve().parent


def alembic_config(settings: Settings) -> Config:
    """Config that works from any cwd: script location and URL come from code, not alembic.ini."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)
