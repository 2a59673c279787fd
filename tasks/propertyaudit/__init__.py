"""PropertyAudit: ask an LLM search-style queries and score how visible a property is in the answers.

The job is its tables (``models.propertyaudit``), its spec, its step and its summary; the
engine does the rest, including the tasks ``propertyaudit.run`` and ``propertyaudit.submit``.
"""

from __future__ import annotations

from dataengine import Job, register
from models.propertyaudit import GeoQuery, GeoQueryResult, GeoRun
from tasks.propertyaudit.demo import DEMO
from tasks.propertyaudit.spec import AuditSpec, build
from tasks.propertyaudit.step import audit_query, plan_query, prepare
from tasks.propertyaudit.summary import summarize

JOB = register(
    Job(
        name="PropertyAudit",
        key="propertyaudit",
        step_noun="query",
        step_plural="queries",
        run_model=GeoRun,
        step_model=GeoQuery,
        result_model=GeoQueryResult,
        spec_model=AuditSpec,
        build=build,
        prepare=prepare,
        execute_step=audit_query,
        summarize=summarize,
        page_columns=("mentioned", "rank", "sentiment", "answer"),
        plan_calls=plan_query,
        demo=DEMO,
    )
)
