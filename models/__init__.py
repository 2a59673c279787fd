"""SQLAlchemy 2.x models. The schema itself is owned by the Alembic migrations in ``alembic/``."""

from models.apikeys import ApiKey, WebSession
from models.base import Base, RunMixin, RunStatus, StepMixin, StepResultMixin
from models.costs import LLMCost, LLMCostRollup, LLMCostTotal
from models.events import EventType, RunEvent
from models.journal import LLMResponse
from models.knowledge import (
    DocumentChunk,
    KnowledgeRefreshResult,
    KnowledgeRefreshRun,
    KnowledgeRefreshSource,
    KnowledgeSource,
)
from models.liveness import WorkerHeartbeat
from models.propertyaudit import GeoQuery, GeoQueryResult, GeoRun
from models.reviewflow import Review, ReviewAnalysisRow, ReviewFlowRun
from models.workspaces import Workspace

__all__ = [
    "ApiKey", "Base", "DocumentChunk", "EventType", "GeoQuery", "GeoQueryResult", "GeoRun", "KnowledgeRefreshResult", "KnowledgeRefreshRun",
    "KnowledgeRefreshSource", "KnowledgeSource", "LLMCost", "LLMCostRollup", "LLMCostTotal", "LLMResponse", "Review", "ReviewAnalysisRow", "ReviewFlowRun", "RunEvent", "RunMixin",
    "RunStatus", "StepMixin", "StepResultMixin", "WebSession", "WorkerHeartbeat", "Workspace",
]
