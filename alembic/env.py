"""Alembic environment: the URL comes from the engine's settings, the target from ``models``."""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import create_engine, pool

from alembic import context
from dataengine.infra.db import connect_args
from dataengine.infra.settings import get_settings
from models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or get_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of touching a database (``alembic upgrade --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply migrations on a live connection, serialised by an advisory lock so two migrators never race."""
    # No statement or lock timeouts: a migration may rightly take long. Keepalives, and no
    # prepared statements behind a transaction pooler, as for the engine's own connections.
    engine = create_engine(_url(), poolclass=pool.NullPool, connect_args=connect_args(_url(), limits=False))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            # Transaction-scoped: held by the migration's own transaction and released by its
            # commit or rollback, so nothing leaks into a session a transaction pooler reuses.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7426001)")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
