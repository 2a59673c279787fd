"""Run the Alembic migrations (``dataengine migrate``), creating the database first if it is missing."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alembic import command
from dataengine.infra.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str | None = None) -> Config:
    """The project's Alembic configuration, pointed at ``url`` (default: ``DATABASE_URL``)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["url"] = url or get_settings().sqlalchemy_url
    cfg.attributes["configure_logging"] = False
    return cfg


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; returns whether it was created."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}):
                return False
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
            return True
    finally:
        admin.dispose()


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Bring the database up to ``revision``."""
    url = url or get_settings().sqlalchemy_url
    ensure_database(url)
    command.upgrade(alembic_config(url), revision)
