"""SQLAlchemy 2.x models. The schema itself is owned by the Alembic migrations in ``alembic/``."""

from models.base import Base, RunMixin, RunStatus, StepMixin, StepResultMixin
from models.propertyaudit import GeoQuery, GeoQueryResult, GeoRun
from models.reviewflow import Review, ReviewAnalysisRow, ReviewFlowRun

__all__ = [
    "Base", "GeoQuery", "GeoQueryResult", "GeoRun", "Review", "ReviewAnalysisRow", "ReviewFlowRun", "RunMixin",
    "RunStatus", "StepMixin", "StepResultMixin",
]
