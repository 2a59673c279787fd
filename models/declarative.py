"""The declarative base: stable constraint names, so that migrations can name what they drop.

Its own module, below every table module, so that the run mixin (``models.base``) can refer to the
workspaces table without the two importing each other.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names, so migrations can name what they drop."""

    metadata = MetaData(naming_convention=NAMING)


def new_base() -> type[DeclarativeBase]:
    """A declarative base with a metadata of its own (and the same constraint names), for tables the
    engine's migrations do not own: a test's own job, created with ``create_all``."""

    class OwnBase(DeclarativeBase):
        metadata = MetaData(naming_convention=NAMING)

    return OwnBase
