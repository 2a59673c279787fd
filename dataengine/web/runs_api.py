"""The run routes of the API: start a run of each job, read, list, cancel and retry runs of any kind.

No ``from __future__ import annotations`` here: the routes of each job are made in a loop, and
FastAPI reads their (per-job) body types from the annotations.
"""

import base64
import binascii
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model
from sqlalchemy import select, tuple_

from dataengine.engine import operator_views
from dataengine.engine.estimates import Estimate
from dataengine.engine.jobs import Job, all_jobs, get_job
from dataengine.engine.run_views import find_run
from dataengine.engine.runs import request_cancel
from dataengine.engine.submitting import MAX_BUDGET_USD, MAX_WORKSPACE_ID_CHARS, submit_run
from dataengine.infra.db import session_scope
from dataengine.infra.errors import RunNotFound, SpecInvalid
from dataengine.infra.settings import get_settings
from dataengine.infra.tiers import TIERS, queue_of
from dataengine.web.bodies import StrictJSONRoute
from dataengine.web.keys import check_key
from dataengine.web.middleware import KEY_ACCEPTED, key_from
from dataengine.web.schemas import (
    EstimateView,
    EventView,
    Problem,
    RunEvents,
    RunPage,
    RunRef,
    RunState,
    RunView,
    Started,
    StartedMany,
)
from models.base import ACTIVE_STATUSES, FINAL_STATUSES, RunStatus

BUDGET_DOC = "The most the run may spend on LLM calls, in USD: it stops before the call that would cross it"


class RetryOptions(BaseModel):
    """What a retry may change."""

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: Decimal | None = Field(None, gt=0, le=MAX_BUDGET_USD, description=BUDGET_DOC)


#: The most runs one page of ``GET /v1/runs`` holds.
MAX_PAGE = 200
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No API key, or not a valid one"},
    413: {"model": Problem, "description": "The body is larger than DATAENGINE_API_MAX_BODY_BYTES"},
    503: {"model": Problem, "description": "The database or the broker is unavailable"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such run"}}
KEY_REUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "The idempotency key was used before with a different spec"}}


def presented_key(
    authorization: Annotated[str | None, Header(description="Bearer API_KEY")] = None,
    x_api_key: Annotated[str | None, Header(description="API_KEY")] = None,
) -> str | None:
    """The key sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    return key_from(authorization=authorization, x_api_key=x_api_key)


def require_key(request: Request, key: Annotated[str | None, Depends(presented_key)]) -> None:
    """Every route but ``/health`` and the OpenAPI document: the same 401 for a missing or a wrong key.

    :class:`~dataengine.web.middleware.KeyGate` has checked it already, before the body was read;
    this is what the OpenAPI document shows, and the check for an app served without the gate."""
    if request.scope.get("state", {}).get(KEY_ACCEPTED) or check_key(key):
        return
    raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


def new_router() -> APIRouter:
    """A router of ``/v1`` routes, every one behind the key."""
    return APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERRORS, route_class=StrictJSONRoute)


router = new_router()


def enqueue(task_name: str, kwargs: dict[str, str], queue: str | None = None) -> object:
    from dataengine.worker.app import enqueue as send

    return send(task_name, kwargs, queue)


def run_view(job: Job, row: dict[str, Any]) -> RunView:
    return RunView(
        **{name: row[name] for name in RunView.model_fields if name in row},
        kind=job.key,
        worker=row["lease_owner"] if row["status"] == RunStatus.running.value else None,
    )


def unprocessable(loc: list[str], msg: str) -> HTTPException:
    """A 422 shaped as FastAPI's own (``detail`` a list naming each bad field), as the document says."""
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])


def _by_run_id(body: Any) -> str:
    return "run" if isinstance(body, dict) and "run_id" in body else "start"


def _status_url(request: Request, run_id: uuid.UUID | str) -> str:
    """Where to poll the run: under ``DATAENGINE_PUBLIC_BASE_URL``, else a path (never from the ``Host`` header)."""
    path = request.app.url_path_for("get_run", run_id=str(run_id))
    base = get_settings().public_base_url
    return f"{str(base).rstrip('/')}{path}" if base is not None else f"{request.scope.get('root_path', '')}{path}"


def _start_existing(request: Request, job: Job, run_id: uuid.UUID) -> Started:
    """A run the web app created itself: enqueue it (once more is harmless: claims are exclusive)."""
    with session_scope() as session:
        found = session.execute(select(job.runs.c.status, job.runs.c.priority).where(job.runs.c.id == run_id)).first()
    if found is None:
        raise RunNotFound(job=job.name, run_id=run_id)
    status = found.status
    if status in ACTIVE_STATUSES:
        enqueue(job.task_name, {"run_id": str(run_id)}, queue_of(found.priority))
    return Started(run_id=run_id, status=status, status_url=_status_url(request, run_id))


PRIORITY_DOC = ("The run's tier: `high` runs are taken from the queue first and get the larger share of the "
                "fleet's calls while others wait; `low` keeps a minimum share and is never starved (default `normal`)")


def _add_submit_route(jobs_router: APIRouter, job: Job) -> None:
    """``POST /v1/<key>/runs``: a run by id, or a full spec (created once per idempotency key)."""
    spec_in: type[BaseModel] = create_model(
        f"{job.spec_model.__name__}Request", __base__=job.spec_model, idempotency_key=(str | None, None),
        dry_run=(bool, Field(False, description="Validate and estimate only: answers 200 with the estimate; "
                                                "nothing is created or sent")),
        max_cost_usd=(Decimal | None, Field(None, gt=0, le=MAX_BUDGET_USD, description=BUDGET_DOC)),
        workspace_id=(str | None, Field(None, min_length=1, max_length=MAX_WORKSPACE_ID_CHARS,
                                        description="The workspace whose provider key the run's calls use")),
        priority=(Literal[TIERS] | None, Field(None, description=PRIORITY_DOC)),  # type: ignore[valid-type]
        __doc__=f"A {job.name} run spec, as ``{job.submit_task_name}`` takes it.",
    )
    Body_ = Annotated[Annotated[RunRef, Tag("run")] | Annotated[spec_in, Tag("start")], Discriminator(_by_run_id)]

    def start(
        request: Request,
        body: Annotated[Body_, Body()],
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Started | JSONResponse:
        if isinstance(body, RunRef):
            return _start_existing(request, job, body.run_id)
        spec = body.model_dump(mode="json", exclude_unset=True)
        if idempotency_key is not None:
            if spec.get("idempotency_key") not in (None, idempotency_key):
                raise SpecInvalid(details="idempotency_key: differs from the Idempotency-Key header")
            spec["idempotency_key"] = idempotency_key
        submitted = submit_run(job=job, spec=spec, send=enqueue)
        if isinstance(submitted, Estimate):
            return JSONResponse(submitted.as_dict())
        run_id = uuid.UUID(submitted)
        _, row = find_run(run_id)
        return Started(run_id=run_id, status=row["status"], status_url=_status_url(request, run_id))

    start.__doc__ = (f"Start a {job.name} run: send `run_id` for a row you created, or the whole spec. "
                     "Answers 202 with the run's id and the URL to poll; with `\"dry_run\": true`, 200 with the "
                     "run's estimate (steps, calls, tokens, cost) and nothing created. The same `Idempotency-Key` "
                     "(or `idempotency_key`) with the same spec, budget and workspace answers the first run again "
                     "(key order and whitespace do not matter); with anything else, 409 and nothing created.")
    responses = NOT_FOUND | KEY_REUSED | {
        200: {"model": EstimateView, "description": "A dry run's estimate: nothing was created"}}
    jobs_router.post(f"/{job.key}/runs", status_code=202, response_model=Started, responses=responses,
                operation_id=f"start_{job.key}", summary=f"Start a {job.name} run")(start)


def _add_start_route(jobs_router: APIRouter, job: Job) -> None:
    """``POST /v1/<task name as a path>``: a run by id, or the job's own start arguments (``Job.start_runs``)."""
    assert job.start_model is not None and job.start_runs is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
    start_model = job.start_model
    Body_ = Annotated[Annotated[RunRef, Tag("run")] | Annotated[start_model, Tag("start")], Discriminator(_by_run_id)]

    def start(request: Request, body: Annotated[Body_, Body()]) -> StartedMany:
        if isinstance(body, RunRef):
            started = _start_existing(request, job, body.run_id)
            return StartedMany(run_id=started.run_id, run_ids=[started.run_id], created=0,
                               status_url=started.status_url)
        assert job.start_runs is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
        runs = job.start_runs(**body.model_dump(mode="json", exclude_unset=True))
        for run_id, created in runs:
            if created:
                enqueue(job.task_name, {"run_id": str(run_id)})
        first = runs[0][0] if runs else None
        return StartedMany(run_id=first, run_ids=[r for r, _ in runs], created=sum(c for _, c in runs),
                           status_url=_status_url(request, first) if first else None)

    start.__doc__ = (f"Start {job.name}: send `run_id` for a row you created, or the arguments of "
                     f"`{job.task_name}`. A property whose run is queued or running gets that run's id.")
    path = "/" + job.task_name.replace(".", "/")
    jobs_router.post(path, status_code=202, response_model=StartedMany, responses=NOT_FOUND,
                operation_id=f"start_{job.key}", summary=f"Start {job.name}")(start)


def job_routes() -> APIRouter:
    """One start route per registered job."""
    jobs_router = new_router()
    for job in all_jobs():
        if job.start_runs is not None and job.start_model is not None:
            _add_start_route(jobs_router, job)
        else:
            _add_submit_route(jobs_router, job)
    return jobs_router


@router.get("/runs/{run_id}", response_model=RunView, responses=NOT_FOUND, summary="A run of any kind")
def get_run(run_id: uuid.UUID) -> RunView:
    """The run's row: status, progress, step index, ETA, tokens, cost, summary and error."""
    job, row = find_run(run_id)
    return run_view(job, row)


@router.get("/runs/{run_id}/events", response_model=RunEvents, responses=NOT_FOUND, summary="A run's history")
def get_events(run_id: uuid.UUID) -> RunEvents:
    """What happened to the run, oldest first: submitted, claimed or resumed (by which worker, with
    which fencing token, at which step), steps failed and retried, handed back, lease lost, recovered
    by a sweeper, stalled, retried, and how it ended."""
    job, _, found = operator_views.events_of(run_id)
    return RunEvents(run_id=run_id, kind=job.key, events=[EventView.model_validate(e) for e in found])


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, rid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), uuid.UUID(rid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise unprocessable(["query", "cursor"], "not a cursor this API gave out") from None


def _encode_cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode()


@router.get("/runs", response_model=RunPage, summary="Runs of every kind, newest first")
def list_runs(
    kind: Annotated[str | None, Query(description="A job's key (its runs only)")] = None,
    status: Annotated[Literal[tuple(s.value for s in RunStatus)] | None, Query()] = None,  # type: ignore[misc]
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> RunPage:
    """Newest first, across kinds (or of one), optionally of one status; ``next_cursor`` pages on."""
    try:
        jobs = [get_job(kind)] if kind is not None else all_jobs()
    except KeyError as exc:
        raise unprocessable(["query", "kind"], exc.args[0]) from None
    after = _decode_cursor(cursor) if cursor else None
    found: list[tuple[Job, dict[str, Any]]] = []
    with session_scope() as session:
        for job in jobs:
            t = job.runs
            query = select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
            if status is not None:
                query = query.where(t.c.status == status)
            if after is not None:
                query = query.where(tuple_(t.c.created_at, t.c.id) < tuple_(*after))
            found += [(job, dict(r)) for r in session.execute(query).mappings()]
    found.sort(key=lambda jr: (jr[1]["created_at"], jr[1]["id"]), reverse=True)
    page = found[:limit]
    more = len(found) > limit
    return RunPage(runs=[run_view(j, r) for j, r in page], next_cursor=_encode_cursor(page[-1][1]) if more else None)


CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem, "description": "Not possible in the run's status"}}


@router.post("/runs/{run_id}/cancel", status_code=202, response_model=RunState, responses=NOT_FOUND | CONFLICT,
             summary="Cancel a run")
def cancel_run(run_id: uuid.UUID) -> RunState:
    """Stop the run: cancelled at once if no worker holds it, else within 2 s, the results of the steps
    in flight dropped (a finished step may still be recorded)."""
    job, row = find_run(run_id)
    if row["status"] in FINAL_STATUSES:
        raise HTTPException(409, f"run is already {row['status']}")
    with session_scope() as session:
        status = request_cancel(session=session, job=job, run_id=run_id)
    return RunState(run_id=run_id, status=status)


@router.post("/runs/{run_id}/retry", status_code=202, response_model=RunState, responses=NOT_FOUND | CONFLICT,
             summary="Retry a failed or cancelled run")
def retry(run_id: uuid.UUID, body: Annotated[RetryOptions | None, Body()] = None) -> RunState:
    """Send a failed or cancelled run back to work: it resumes from its checkpoint, not from step 0 (with a
    new ``max_cost_usd``, a run its budget stopped goes on)."""
    job, _ = find_run(run_id)
    budget = None if body is None or body.max_cost_usd is None else body.max_cost_usd.quantize(Decimal("0.000001"))
    kept = operator_views.retry(job, run_id, enqueue, max_cost_usd=budget)
    if kept is not None:
        raise HTTPException(409, f"run is {kept}; only failed or cancelled runs can be retried")
    return RunState(run_id=run_id, status=RunStatus.queued.value)
