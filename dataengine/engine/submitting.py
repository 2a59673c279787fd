"""Creating runs from a producer's spec, for every job: validate, create once per idempotency key, start.

The job says what its spec is (a pydantic model) and what a valid spec becomes (``Job.build``);
the engine owns the rest: the errors a producer reads, the idempotency key, the engine's own
columns (step count, the first dispatch deadline) and how the run starts. The API and the CLI send
the run's id to the queue. The ``<job>.submit`` task, in a worker process with room for one more
run, creates the run already claimed by that process and starts it there (``StartHere``): a run
costs one message and one claim, not two of each. Either way the run row is the truth: a worker
that dies holding it is found by the sweepers like any other.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints, ValidationError
from sqlalchemy import Connection, TextClause, bindparam, select, text
from sqlalchemy.orm import Session

from dataengine.engine.estimates import Estimate, estimate
from dataengine.engine.jobs import STEP_KEY_COLUMNS, Job
from dataengine.engine.options import SubmitOptions
from dataengine.engine.runs import AHEAD, Claim
from dataengine.infra.db import statement_scope
from dataengine.infra.errors import IdempotencyKeyReused, SpecInvalid
from dataengine.infra.metrics import metrics
from dataengine.infra.queries import column_list, identifier, json_rows_sql, statement
from dataengine.infra.settings import get_settings
from dataengine.infra.tiers import Sender, parse_tier, queue_of
from dataengine.llm import workspaces
from models.base import ACTIVE_STATUSES, RunStatus

#: Longest idempotency key a producer may send (the column's width).
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: Problems a refused spec's message lists at most (a million bad items make one short message).
MAX_PROBLEMS_LISTED = 20
#: Longest workspace id (the column's width).
MAX_WORKSPACE_ID_CHARS = 100
#: Text in a spec: stripped, and not empty (a job adds ``StringConstraints(max_length=...)``).
SpecText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _scan(value: Any, bad: list[str], path: str = "") -> int:
    """The UTF-8 bytes of every string in ``value`` (keys included); where one holds a NUL character,
    which PostgreSQL text cannot store, or a lone surrogate, which UTF-8 cannot, what is wrong with
    it is added to ``bad``."""
    if isinstance(value, str):
        if "\x00" in value:
            bad.append(f"{path or 'spec'}: text must not contain NUL (\\x00) characters")
        if value.isascii():
            return len(value)
        try:
            return len(value.encode())
        except UnicodeEncodeError:
            bad.append(f"{path or 'spec'}: text must be valid Unicode (it holds a lone surrogate)")
            return len(value.encode(errors="replace"))
    if isinstance(value, dict):
        return sum(_scan(k, bad, path) + _scan(v, bad, f"{path}.{str(k)[:40]}".lstrip(".")) for k, v in value.items())
    if isinstance(value, list):
        return sum(_scan(v, bad, f"{path}.{i}".lstrip(".")) for i, v in enumerate(value))
    return 0


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecInvalid(details="idempotency_key: must be a non-empty string")
    if len(value.strip()) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise SpecInvalid(details=f"idempotency_key: at most {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    return value.strip()


#: The largest budget a run may carry (the column's range).
MAX_BUDGET_USD = Decimal("99999999")


def _max_cost(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise SpecInvalid(details="max_cost_usd: must be a number of US dollars, like 5 or 0.25")
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise SpecInvalid(details=f"max_cost_usd: {str(value)[:40]!r} is not a number of US dollars") from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_BUDGET_USD:
        raise SpecInvalid(details=f"max_cost_usd: must be above 0 and at most {MAX_BUDGET_USD:,}, got {str(value)[:40]}")
    return amount.quantize(Decimal("0.000001"))


def _workspace_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_WORKSPACE_ID_CHARS:
        raise SpecInvalid(details=f"workspace_id: must be a workspace's id, 1 to {MAX_WORKSPACE_ID_CHARS} characters")
    return value.strip()


def _priority(value: Any) -> str:
    try:
        return parse_tier(value)
    except ValueError as exc:
        raise SpecInvalid(details=f"priority: {exc}") from None


def _dry_run(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecInvalid(details="dry_run: must be true or false")
    return value


def validate_spec(job: Job, spec: Any) -> tuple[BaseModel, SubmitOptions]:
    """The job's validated spec and the engine's options (idempotency key, budget, workspace, dry run),
    or ``SpecInvalid`` listing every problem on one line."""
    if not isinstance(spec, dict):
        raise SpecInvalid(details=f"spec: must be a JSON object, got {type(spec).__name__}")
    bad: list[str] = []
    size, limit = _scan(spec, bad), get_settings().max_spec_bytes
    if size > limit:
        raise SpecInvalid(details=f"spec: {size:,} bytes of text; the limit is {limit:,} (DATAENGINE_MAX_SPEC_BYTES)")
    if bad:
        raise SpecInvalid(details="; ".join(bad[:MAX_PROBLEMS_LISTED]))
    fields = dict(spec)
    options = SubmitOptions(
        idempotency_key=_idempotency_key(fields.pop("idempotency_key", None)),
        max_cost_usd=_max_cost(fields.pop("max_cost_usd", None)),
        workspace_id=_workspace_id(fields.pop("workspace_id", None)),
        priority=_priority(fields.pop("priority", None)),
        dry_run=_dry_run(fields.pop("dry_run", None)),
    )
    try:
        return job.spec_model.model_validate(fields), options
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg'].removeprefix('Value error, ')}"
            for e in errors[:MAX_PROBLEMS_LISTED]
        ) + (f"; and {len(errors) - MAX_PROBLEMS_LISTED:,} more" if len(errors) > MAX_PROBLEMS_LISTED else "")
        raise SpecInvalid(details=problems) from None


def _require_workspace(options: SubmitOptions | None) -> None:
    """A run may name only a workspace that exists (checked before anything is written; the run tables'
    foreign key refuses the others too, for producers that write rows themselves)."""
    if options is not None and options.workspace_id is not None and not workspaces.exists(options.workspace_id):
        raise SpecInvalid(details=f"workspace_id: {workspaces.WorkspaceNotFound(workspace_id=options.workspace_id)}")


@dataclass(frozen=True)
class StartHere:
    """Create the run already claimed by ``worker_id`` and start it in this process (the submit task,
    in a worker with room for one more run): no second message, no second claim."""

    worker_id: str
    task_id: str | None
    #: Works the claimed run (``Created.claim``) on this process's threads.
    start: Callable[[Created], None]


@dataclass(frozen=True)
class Created:
    """A run as a submit left it: its id, its status, and this worker's claim when it holds it."""

    run_id: uuid.UUID
    status: str
    claim: Claim | None = None
    #: Its steps as ``(index, item)``, when a claimed run need not read them back.
    steps: list[tuple[int, Any]] | None = None
    #: ``time.monotonic()`` just before the insert was sent: its commit proved the claim then.
    sent_at: float = 0.0


def spec_digest(*, spec: BaseModel, options: SubmitOptions) -> str:
    """SHA-256 (hex) of what makes a run what it is: the validated spec and the options that change the run
    (budget, workspace), as JSON with sorted keys. Key order, whitespace, defaults spelled out or left out
    and ``5`` against ``5.0`` dollars all give the same digest; ``dry_run`` and the key itself are not in it."""
    normal = {
        "spec": spec.model_dump(mode="json"),
        "max_cost_usd": None if options.max_cost_usd is None else str(options.max_cost_usd),
        "workspace_id": options.workspace_id,
    }
    digest = hashlib.sha256()
    # Hashed a piece at a time: a spec of 10,000 queries is not held once more as one string.
    for piece in json.JSONEncoder(sort_keys=True, separators=(",", ":")).iterencode(normal):
        digest.update(piece.encode())
    return digest.hexdigest()


def _same_spec(found: Any, *, key: str, digest: str) -> Created:
    """The run a key made before, when this submit's spec is the one it was made with; a run from before
    digests were stored (``NULL``) is returned as it always was."""
    if found.spec_digest is not None and found.spec_digest != digest:
        raise IdempotencyKeyReused(key=key, run_id=found.id)
    return Created(found.id, found.status)


def create_run(*, session: Session | Connection, job: Job, spec: BaseModel,
               options: SubmitOptions | None = None) -> tuple[uuid.UUID, str]:
    """Create the run and its steps, once per idempotency key; returns (run id, status)."""
    _require_workspace(options)
    created = _create(session=session, job=job, spec=spec, options=options or SubmitOptions(), here=None)
    return created.run_id, created.status


def _create(*, session: Session | Connection, job: Job, spec: BaseModel, options: SubmitOptions,
            here: StartHere | None) -> Created:
    """Insert the run and its steps in one statement (a transaction by itself on an autocommit connection).
    ``here``: claimed by that worker, its first steps recorded as in flight (so that its loop starts
    them without a checkpoint of its own). A run whose key exists already is returned as it is, if it was
    made from the same spec (``IdempotencyKeyReused`` if not)."""
    runs, idempotency_key, digest = job.runs, options.idempotency_key, None
    if idempotency_key is not None:  # a repeated submit: found without building or sending its steps again
        digest = spec_digest(spec=spec, options=options)
        existing = session.execute(select(runs.c.id, runs.c.status, runs.c.spec_digest)
                                   .where(runs.c.idempotency_key == idempotency_key))
        if (found := existing.one_or_none()) is not None:
            return _same_spec(found, key=idempotency_key, digest=digest)
    new = job.build(spec)
    s = get_settings()
    claimed = here is not None and bool(new.steps)
    values = {f"v_{name}": value for name, value in new.values.items()}
    params = {
        **values, "id": uuid.uuid4(), "job_key": job.key, "total_steps": len(new.steps), "key": idempotency_key,
        "digest": digest, "max_cost": options.max_cost_usd, "workspace": options.workspace_id,
        "priority": options.priority, "steps": _steps_json(new.steps),
        "status": (RunStatus.running if claimed else RunStatus.queued).value,
        "owner": here.worker_id if claimed else None, "task_id": here.task_id if claimed else None,
        "token": 1 if claimed else 0,
        "in_flight": list(range(min(len(new.steps), AHEAD))) if claimed else [],
        # Unclaimed by then, the sweeper enqueues it again (a message lost before a worker saw it).
        "lease": timedelta(seconds=s.lease_s if claimed else s.redispatch_after_s),
    }
    sent = time.monotonic()
    row = session.execute(_create_sql(job, tuple(sorted(new.values))), params).one_or_none()
    if row is None:  # a concurrent submit with the same key won the race (committed): its digest decides
        return _create(session=session, job=job, spec=spec, options=options, here=None)
    metrics().runs_submitted.labels(job.key).inc()
    if not claimed:
        return Created(row.id, row.status)
    claim = Claim(run_id=row.id, token=row.fencing_token, worker_id=row.lease_owner, row=row)
    return Created(row.id, row.status, claim, job.items_of(new.steps), sent)


def _steps_json(steps: list[dict[str, Any]]) -> str:
    """The steps as one JSON array, encoded a step at a time: ``json.dumps`` of the whole list would
    hold a small string per token of it at once (7x the spec's size for 10,000 queries; 3x this way)."""
    return "[" + ",".join(json.dumps({**step, "query_index": i}, default=str) for i, step in enumerate(steps)) + "]"


@cache
def _create_sql(job: Job, value_columns: tuple[str, ...]) -> TextClause:
    """The insert of a run (the job's own ``value_columns`` and the engine's) and of its steps, which
    arrive as one JSON array: one statement, built once per job, so a submit is one round trip."""
    runs, steps = job.runs, job.steps
    python_side = [c.name for c in (*runs.columns, *steps.columns) if c.default is not None and c.name != "id"]
    if python_side:
        raise ValueError(f"job {job.key}: columns {', '.join(python_side)} have a Python-side default;"
                         " give them a server_default")
    own = [c for c in steps.columns if c.name not in STEP_KEY_COLUMNS]
    types, select_list = json_rows_sql(own)
    claimed = "CASE WHEN CAST(:owner AS text) IS NULL THEN NULL ELSE now() END"
    engine_columns = {
        "id": ":id", "total_steps": ":total_steps", "idempotency_key": ":key",
        "spec_digest": "CAST(:digest AS text)",
        "max_cost_usd": "CAST(:max_cost AS numeric)", "workspace_id": "CAST(:workspace AS text)",
        "priority": "CAST(:priority AS text)", "status": "CAST(:status AS text)",
        "lease_owner": "CAST(:owner AS text)", "task_id": ":task_id", "fencing_token": ":token",
        "in_flight_steps": "CAST(:in_flight AS integer[])", "lease_expires_at": "now() + CAST(:lease AS interval)",
        "started_at": claimed, "heartbeat_at": claimed,
    }
    columns = {**{name: f":v_{name}" for name in value_columns}, **engine_columns}
    sql = statement("create_run", job, run_columns=", ".join(identifier(name) for name in columns),
                    run_values=", ".join(columns.values()), step_columns=column_list(own), step_values=select_list,
                    step_types=types)
    return (text(sql).bindparams(*(bindparam(f"v_{name}", type_=runs.c[name].type) for name in value_columns))
            .columns(**{c.name: c.type for c in runs.c}))


def submit_run(*, job: Job, spec: Any, send: Sender,
               here: StartHere | None = None) -> str | Estimate:
    """Validate, create the run idempotently and start it: in this process (``here``), or by sending
    its id with ``send``. Returns the run id; a dry run (``dry_run: true``) creates and sends nothing and
    returns the run's ``Estimate`` (its idempotency key, if any, is ignored)."""
    validated, options = validate_spec(job, spec)
    _require_workspace(options)
    if options.dry_run:
        return estimate(job=job, spec=validated, options=options)
    with statement_scope() as conn:
        created = _create(session=conn, job=job, spec=validated, options=options, here=here)
    if created.claim is not None:
        assert here is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
        here.start(created)
    elif created.status in ACTIVE_STATUSES:  # a repeated submit of a live run re-sends it: claims are exclusive
        send(job.task_name, {"run_id": str(created.run_id)}, queue_of(options.priority))
    return str(created.run_id)
