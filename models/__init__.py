"""SQLAlchemy 2.x models. The schema itself is owned by the Alembic migrations in ``alembic/``."""

from models.base import Base, RunMixin, RunStatus, StepMixin, StepResultMixin
from models.propertyaudit import GeoQuery, GeoQueryResult, GeoRun

__all__ = ["Base", "GeoQuery", "GeoQueryResult", "GeoRun", "RunMixin", "RunStatus", "StepMixin", "StepResultMixin"]
