"""Knowledge Refresh: re-read each property's knowledge sources, skip what has not changed, chunk,
embed and upsert the document chunks.

The job is its tables (``models.knowledge``), its spec and run starting (``spec.py``), its step
(``step.py``: fetch with the SSRF guard of ``fetch.py``, chunk, embed) and its summary; the engine
does the rest, including the task ``knowledge.refresh``. A source that cannot be fetched is
recorded with its error and the run goes on; only an LLM outage (or the database's) retries the run.
"""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

from dataengine import Job, register
from models.knowledge import KnowledgeRefreshResult, KnowledgeRefreshRun, KnowledgeRefreshSource
from tasks.knowledge.config import KnowledgeLimits
from tasks.knowledge.spec import KnowledgeRunSpec, RefreshRequest, build, start_runs
from tasks.knowledge.step import (
    SOURCE_FROM_RESULT,
    failed_source,
    load_sources,
    plan_source,
    prepare,
    record_source_chunks,
    refresh_source,
)
from tasks.knowledge.summary import summarize

JOB = register(
    Job(
        name="KnowledgeRefresh",
        key="knowledge",
        step_noun="source",
        step_plural="sources",
        run_model=KnowledgeRefreshRun,
        step_model=KnowledgeRefreshSource,
        result_model=KnowledgeRefreshResult,
        spec_model=KnowledgeRunSpec,
        build=build,
        prepare=prepare,
        execute_step=refresh_source,
        summarize=summarize,
        # A fetch that times out is the source's failure, recorded; the step's own database reads
        # failing is an outage, retried with the run.
        transient_errors=(OperationalError, InterfaceError),
        step_error_policy="record",
        failed_step_values=failed_source,
        record_step_rows=record_source_chunks,
        checkpoint_sql=SOURCE_FROM_RESULT,
        run_task_name="knowledge.refresh",
        start_runs=start_runs,
        start_model=RefreshRequest,
        load_items=load_sources,
        page_columns=("outcome", "chunks_added", "chunks_updated", "chunks_deleted", "tokens_embedded", "error"),
        plan_calls=plan_source,
        cli="tasks.knowledge.cli:knowledge_cli",
        schedules=lambda: {"knowledge-refresh": KnowledgeLimits.current().refresh_schedule},
    )
)
