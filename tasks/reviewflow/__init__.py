"""ReviewFlow: analyse a batch of a property's reviews (sentiment, topics, urgency, a suggested
reply), then sum the batch up.

The job is its tables (``models.reviewflow``), its spec, its step and its summary; the engine
does the rest, including the tasks ``reviewflow.analyze`` and ``reviewflow.submit``. A review
the model cannot analyse is recorded with its error and the run goes on.
"""

from __future__ import annotations

from dataengine import Job, register
from models.reviewflow import Review, ReviewAnalysisRow, ReviewFlowRun
from tasks.reviewflow.demo import DEMO
from tasks.reviewflow.spec import ReviewFlowSpec, build
from tasks.reviewflow.step import (
    GROUP_SIZE,
    analyze_group,
    analyze_review,
    failed_review,
    is_short,
    plan_reviews,
    prepare,
)
from tasks.reviewflow.summary import summarize

JOB = register(
    Job(
        name="ReviewFlow",
        key="reviewflow",
        step_noun="review",
        step_plural="reviews",
        run_model=ReviewFlowRun,
        step_model=Review,
        result_model=ReviewAnalysisRow,
        spec_model=ReviewFlowSpec,
        build=build,
        prepare=prepare,
        execute_step=analyze_review,
        summarize=summarize,
        step_error_policy="record",
        failed_step_values=failed_review,
        run_task_name="reviewflow.analyze",
        execute_group=analyze_group,
        groupable=is_short,
        group_size=GROUP_SIZE,
        page_columns=("sentiment_label", "sentiment_score", "urgency", "topics", "needs_reply", "error"),
        plan_calls=plan_reviews,
        demo=DEMO,
    )
)
