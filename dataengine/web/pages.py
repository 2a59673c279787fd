"""The runs page, served by the API's own app: ``/runs`` (running and recent runs of every kind),
``/runs/{id}`` (one run: progress, summary, its steps' results), the login form that turns an API
key into a session cookie, and the JSON those pages poll (``/runs/api/...``).

The pages are static HTML shells filled in by ``static/runs.js``, which polls the JSON every second
and changes the page in place. No data reaches a browser without a valid session cookie
(``dataengine.web.sessions``).
"""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from dataengine.engine.events import history
from dataengine.engine.jobs import Job, all_jobs
from dataengine.engine.run_views import find_run
from dataengine.infra.db import session_scope
from dataengine.web import runs_api
from dataengine.web.login import LoginCrossSite, LoginFormTooLarge, check_same_origin, cookie_secure, read_form
from dataengine.web.schemas import EventView, RunState, RunView
from dataengine.web.sessions import (
    COOKIE,
    SESSION_TTL_S,
    SessionSecretMissing,
    log_in,
    log_out,
    require_session,
    session_valid,
)
from models.base import ACTIVE_STATUSES, FINAL_STATUSES

HERE = Path(__file__).parent
#: Where the login form may send the browser on: the runs page or a run's page.
NEXT_PATH = re.compile(r"/runs(/[0-9a-fA-F-]{36})?")
#: Active runs listed at most, and the newest finished ones listed after them.
ACTIVE_LISTED, RECENT_LISTED = 100, 25
#: A run's page shows its latest events, this many at most.
HISTORY_SHOWN = 200
#: Result rows per page of a run's page, and the characters a cell shows at most.
RESULTS_PAGE, CELL_CHARS = 50, 240
#: The largest step index a run can have (the column is a PostgreSQL integer).
MAX_STEP_INDEX = 2**31 - 1
#: Fields of a step's item (as ``Job.load_steps`` reads it) that say what the step was about, by preference;
#: an item that is a string (a query) is that string.
STEP_TEXT_FIELDS = ("query_text", "review_text", "url", "title")
#: Columns every result table has that say nothing about the step's outcome.
ENGINE_COLUMNS = frozenset({"run_id", "query_index", "fencing_token", "created_at", "prompt_tokens",
                            "completion_tokens", "cost_usd", "latency_ms"})
#: Sent with every page: nothing but this origin's own files runs, loads or frames the page. No referrer
#: leaves for another site; within this one it is sent, because under ``no-referrer`` a browser posts the
#: login form with ``Origin: null``, which the login's same-origin check must refuse.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# The pages -----------------------------------------------------------------------------------------


@cache
def _template(name: str) -> Template:
    return Template((HERE / "templates" / name).read_text())


#: The script every signed-in page runs (the login form runs none).
PAGE_SCRIPT = '  <script src="/runs/static/runs.js" defer></script>\n'


def _page(name: str, *, title: str, body_attrs: str, signed_in: bool = True, status_code: int = 200,
          **values: str) -> HTMLResponse:
    """``templates/<name>`` (its ``$values`` HTML-escaped) in ``layout.html``; a signed-in page gets the
    header bar (brand, live status, log out) and the script."""
    content = _template(name).substitute({k: html.escape(v) for k, v in values.items()})
    text = _template("layout.html").substitute(
        title=html.escape(title), body_attrs=body_attrs, head=PAGE_SCRIPT if signed_in else "",
        content=(_template("bar.html").template if signed_in else "") + content,
    )
    return HTMLResponse(text, status_code=status_code, headers=PAGE_HEADERS)


def _next_path(value: str) -> str:
    """Where to go after logging in: the runs page or a run's page, never another site."""
    return value if NEXT_PATH.fullmatch(value) else "/runs"


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/runs/login?next={quote(request.url.path)}", status_code=303)


pages = APIRouter(include_in_schema=False)


def _login_page(*, next_path: str = "/runs", error: str = "", status_code: int = 200) -> HTMLResponse:
    return _page("login.html", title="Log in", body_attrs='class="login"', signed_in=False, status_code=status_code,
                 error=error, error_class="error" if error else "hidden", next=next_path)


@pages.get("/runs/login")
def login_form(request: Request, next_path: str = Query("/runs", alias="next")) -> Response:
    """The login form (or the runs page, for a live session)."""
    if session_valid(request):
        return RedirectResponse(_next_path(next_path), status_code=303)
    return _login_page(next_path=_next_path(next_path))


@pages.post("/runs/login")
async def login(request: Request) -> Response:
    """Check the pasted key; on success open a session, set its cookie and go to the runs page."""
    try:
        check_same_origin(request)
        form = await read_form(request)
    except LoginCrossSite as exc:
        return _login_page(error=str(exc), status_code=403)
    except LoginFormTooLarge as exc:  # the rest of the body stays unread: the connection cannot be reused
        response = _login_page(error=str(exc), status_code=413)
        response.headers["Connection"] = "close"
        return response
    key, next_path = form.get("key", "").strip(), _next_path(form.get("next", "/runs"))
    try:
        token = await run_in_threadpool(log_in, key) if key else None
    except SessionSecretMissing as exc:
        return _login_page(next_path=next_path, error=str(exc), status_code=503)
    if token is None:
        return _login_page(next_path=next_path, error="That API key is not valid (or it was revoked).",
                           status_code=401)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(COOKIE, token, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="strict",
                        secure=cookie_secure(request))
    return response


@pages.post("/runs/logout")
def logout(request: Request) -> Response:
    """End the session on the server (a copy of the cookie dies too), forget the cookie, back to the login form."""
    log_out(request)
    response = RedirectResponse("/runs/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=cookie_secure(request))
    return response


@pages.get("/runs")
def runs_page(request: Request) -> Response:
    """Running and recent runs of every kind."""
    if not session_valid(request):
        return _to_login(request)
    return _page("runs.html", title="Runs", body_attrs='data-page="runs"')


@pages.get("/runs/{run_id}")
def run_page(request: Request, run_id: uuid.UUID) -> Response:
    """One run: its progress, summary and results (the page reads the run id from its own URL)."""
    if not session_valid(request):
        return _to_login(request)
    return _page("run.html", title=f"Run {run_id}", body_attrs=f'data-page="run" data-run-id="{run_id}"',
                 run_id=str(run_id))


# The JSON the pages poll ---------------------------------------------------------------------------


class JobInfo(BaseModel):
    """What a page says about a kind of run."""

    key: str
    name: str
    step_noun: str
    step_plural: str


class PageRun(RunView):
    """A run as the pages show it: the API's view, what it is about, and its job's words."""

    label: str | None
    job: JobInfo


class PageRuns(BaseModel):
    """The runs page: active runs, newest first, then the newest finished ones."""

    active: list[PageRun]
    recent: list[PageRun]


class ResultPage(BaseModel):
    """One page of a run's step results, by step index; each cell already shortened to text."""

    columns: list[str]
    rows: list[dict[str, Any]]
    offset: int
    limit: int
    total: int


class RunDetail(BaseModel):
    """A run's page: the run, a page of its results and its history (the latest events, oldest first)."""

    run: PageRun
    results: ResultPage
    events: list[EventView]


def _job_info(job: Job) -> JobInfo:
    return JobInfo(key=job.key, name=job.name, step_noun=job.step_noun, step_plural=job.step_plural)


def _page_run(job: Job, row: dict[str, Any]) -> PageRun:
    label = row.get("property_name") or row.get("property_id")
    return PageRun(**runs_api.run_view(job, row).model_dump(), label=label, job=_job_info(job))


def _listed(statuses: tuple[str, ...], limit: int) -> list[PageRun]:
    found: list[tuple[Job, dict[str, Any]]] = []
    with session_scope() as session:
        for job in all_jobs():
            t = job.runs
            query = select(t).where(t.c.status.in_(statuses)).order_by(t.c.created_at.desc()).limit(limit)
            found += [(job, dict(r)) for r in session.execute(query).mappings()]
    found.sort(key=lambda jr: jr[1]["created_at"], reverse=True)
    return [_page_run(job, row) for job, row in found[:limit]]


def _cell(value: Any) -> str | int | float | bool | None:
    """A result value as the table shows it: numbers and yes/no as they are, anything else as short text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=str, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _step_text(item: Any) -> str | None:
    """What a step was about: its item itself (a query), or the item's first STEP_TEXT_FIELDS field set."""
    if item is None or isinstance(item, str):
        return item
    if is_dataclass(item) and not isinstance(item, type):
        item = {f.name: getattr(item, f.name) for f in fields(item)}
    if not isinstance(item, dict):
        return None
    return next((item[name] for name in STEP_TEXT_FIELDS if item.get(name)), None)


def _results(job: Job, run_id: uuid.UUID, offset: int) -> ResultPage:
    r = job.results
    wanted = job.page_columns or tuple(c.name for c in r.columns if c.name not in ENGINE_COLUMNS)
    shown = [r.c[name] for name in wanted]
    query = (
        select(r.c.query_index, *shown, (r.c.prompt_tokens + r.c.completion_tokens).label("tokens"), r.c.cost_usd,
               r.c.latency_ms)
        .where(r.c.run_id == run_id).order_by(r.c.query_index).offset(offset).limit(RESULTS_PAGE)
    )
    with session_scope() as session:
        total = session.scalar(select(func.count()).select_from(r).where(r.c.run_id == run_id)) or 0
        rows = session.execute(query).mappings().all()
        items: dict[int, Any] = {}
        if rows:  # the steps as the job reads them (a source with its URL); results come nearly in index order
            first, last = rows[0]["query_index"], rows[-1]["query_index"]
            items = dict(job.load_steps(session, run_id, first, min(last - first + 1, 4 * RESULTS_PAGE)))
    columns = ["query_index", "step", *(c.name for c in shown), "tokens", "cost_usd", "latency_ms"]
    cells = [{**row, "step": _step_text(items.get(row["query_index"]))} for row in rows]
    return ResultPage(columns=columns, rows=[{k: _cell(row[k]) for k in columns} for row in cells],
                      offset=offset, limit=RESULTS_PAGE, total=total)


api = APIRouter(prefix="/runs/api", dependencies=[Depends(require_session)], include_in_schema=False)


@api.get("/runs", response_model=PageRuns)
def page_runs() -> PageRuns:
    """Every active run (up to ACTIVE_LISTED) and the newest finished ones, newest first."""
    return PageRuns(active=_listed(ACTIVE_STATUSES, ACTIVE_LISTED), recent=_listed(FINAL_STATUSES, RECENT_LISTED))


@api.get("/runs/{run_id}", response_model=RunDetail)
def page_run(run_id: uuid.UUID, offset: int = Query(0, ge=0, le=MAX_STEP_INDEX)) -> RunDetail:
    """A run and one page of its results from ``offset`` on."""
    job, row = find_run(run_id)
    with session_scope() as session:
        events = [EventView.model_validate(e) for e in history(session, run_id, limit=HISTORY_SHOWN)]
    return RunDetail(run=_page_run(job, row), results=_results(job, run_id, offset), events=events)


@api.post("/runs/{run_id}/cancel", status_code=202, response_model=RunState)
def page_cancel(run_id: uuid.UUID) -> RunState:
    """As ``POST /v1/runs/{id}/cancel``."""
    return runs_api.cancel_run(run_id)


@api.post("/runs/{run_id}/retry", status_code=202, response_model=RunState)
def page_retry(run_id: uuid.UUID) -> RunState:
    """As ``POST /v1/runs/{id}/retry``."""
    return runs_api.retry(run_id)


def add_pages(app: FastAPI) -> None:
    """Serve the runs page, its JSON and its static files from ``app``."""
    app.include_router(api)
    app.mount("/runs/static", StaticFiles(directory=HERE / "static"), name="runs-static")
    app.include_router(pages)
