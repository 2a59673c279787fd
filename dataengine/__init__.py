"""dataengine: durable Celery runs for long LLM jobs, checkpointed in PostgreSQL.

``celery -A dataengine worker`` finds the Celery app here.
"""

from dataengine.celery_app import app

__all__ = ["app"]
