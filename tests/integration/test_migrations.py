"""The schema Alembic builds is the schema the models describe, and it can be rolled back."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from alembic import command
from dataengine.infra.migrate import alembic_config
from models import Base


def test_migrations_and_models_agree(db_url):
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_downgrade_to_empty_and_upgrade_again(db_url):
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "base")
    engine = create_engine(db_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert {"geo_runs", "geo_queries", "geo_query_results"} <= set(inspect(engine).get_table_names())
    engine.dispose()
