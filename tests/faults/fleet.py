"""Runs of every job under a fault, and the ledger that proves the engine's promises afterwards.

A :class:`Fleet` submits runs (by default one of 100 steps of each job), takes a snapshot at
each fault (what was recorded, what the stand-in had answered), and at the end checks, for
every run:

- it completed with every step recorded once;
- no step recorded before a fault was asked of the stand-in after it;
- each step was asked at most once more per fault, and in all no more than the steps that can be
  in flight at a fault (twice the units running, ``kinds.assert_nothing_paid_twice``);
- no write was accepted from a stale claim: a trigger (:func:`audit_writes`) compares the fencing
  token of every recorded result with the run's own at the moment it was inserted.

The figures it measures go to the scenario's report (``report.record``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from conftest import wait_for
from helpers import audit_spec, create, results, review_spec, run_row
from kinds import KINDS, Kind
from knowledgeserver import knowledge_spec
from sqlalchemy import create_engine, text

from dataengine.infra.settings import get_settings

#: Every scenario runs each job: its three promises hold for all of them.
ALL_KINDS = tuple(KINDS.values())
STEPS = 100


def audit_writes(url: str) -> None:
    """Record, for every result inserted into ``url``'s database, the run's fencing token at that moment."""
    from dataengine.engine.jobs import all_jobs, load_jobs

    load_jobs()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("""
            CREATE TABLE IF NOT EXISTS fault_writes (
                results text, run_id uuid, query_index int, result_token bigint, run_token bigint,
                at timestamptz DEFAULT clock_timestamp())"""))
        conn.execute(text("""
            CREATE OR REPLACE FUNCTION fault_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              EXECUTE format('INSERT INTO fault_writes (results, run_id, query_index, result_token, run_token)
                              SELECT %L, $1, $2, $3, fencing_token FROM %I WHERE id = $1', TG_TABLE_NAME, TG_ARGV[0])
                USING NEW.run_id, NEW.query_index, NEW.fencing_token;
              RETURN NULL;
            END $$"""))
        for job in all_jobs():
            conn.execute(text(f"DROP TRIGGER IF EXISTS fault_audit ON {job.results.name}"))
            conn.execute(text(f"CREATE TRIGGER fault_audit AFTER INSERT ON {job.results.name} "
                              f"FOR EACH ROW EXECUTE FUNCTION fault_audit('{job.runs.name}')"))
    engine.dispose()


def stale_writes(url: str) -> list[dict[str, Any]]:
    """Results inserted under a token that was no longer the run's (none, if fencing holds)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM fault_writes WHERE result_token <> run_token")).mappings().all()
        audited = conn.execute(text("SELECT count(*) FROM fault_writes")).scalar_one()
    engine.dispose()
    assert audited > 0, "the write audit saw no insert: is the trigger installed in the workers' database?"
    return [dict(r) for r in rows]


def tagged_spec(kind: Kind, steps: int, tag: str) -> dict[str, Any]:
    """A spec of ``steps`` steps of ``kind`` with ``tag`` in every text its calls send (so no other run
    shares a prompt, and the stand-in can pace the run by it)."""
    if kind.key == "propertyaudit":
        return audit_spec(steps, tag=tag, name=f"Cedar Flats {tag}")
    if kind.key == "reviewflow":
        return review_spec(steps, tag=tag)
    return knowledge_spec(steps, property_id=f"fault-{tag}", tag=tag)


def reread(read: Callable[[], Any], timeout_s: float = 60) -> Any:
    """``read()``, again on a new connection while the database is away (a test's reads are not the subject)."""
    from sqlalchemy.exc import OperationalError

    from dataengine.infra.db import get_engine

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            get_engine().dispose()
            time.sleep(0.2)


@dataclass
class Tracked:
    """One run of the fleet: its kind, its id and the prompt of each step (what the stand-in counts)."""

    kind: Kind
    run_id: uuid.UUID
    prompts: list[str]
    steps: int

    def asked(self, fake: Any) -> list[int]:
        """How many answered calls carried each step's prompt (``fake``: the stand-in, or its :class:`Counts`)."""
        counts = fake if isinstance(fake, Counts) else Counts(fake)
        return [self.kind.asked(counts, p) for p in self.prompts]


class Counts:
    """The stand-in's counts read once, answering ``stats()`` as the server would (one request, not one per step)."""

    def __init__(self, fake: Any) -> None:
        self._stats = fake.stats()

    def stats(self) -> dict[str, Any]:
        return self._stats


@dataclass
class Fault:
    """What was true when a fault was injected."""

    what: str
    at: float
    #: run id -> the steps recorded then, and how often the stand-in had answered each step then.
    recorded: dict[uuid.UUID, set[int]] = field(default_factory=dict)
    asked: dict[uuid.UUID, list[int]] = field(default_factory=dict)


@dataclass
class Figures:
    """What a scenario measured, for docs/reliability.md."""

    runs: int
    steps: int
    faults: int
    extra_calls: int
    most_asked: int
    stale_writes: int
    recovery_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """Runs of every job under one scenario's faults."""

    def __init__(self, fake: Any, send: Callable[[str, dict[str, str]], Any], db_url: str) -> None:
        self.fake, self.send, self.db_url = fake, send, db_url
        self.runs: list[Tracked] = []
        self.faults: list[Fault] = []
        self.recovery_s: list[float] = []
        #: tag -> the latency of every call of the run whose texts carry it.
        self.pace: dict[str, float] = {}

    def submit(self, kinds: Iterable[Kind] = ALL_KINDS, steps: int = STEPS, *, latency_ms: float = 400,
               send: bool = True) -> list[Tracked]:
        """Create a run of ``steps`` steps of each kind and send each to the queue. Each run's calls take
        ``latency_ms`` scaled for its kind (``Kind.latency_scale``), so runs of every kind last about as
        long and a fault lands in the middle of all of them."""
        new = []
        for kind in kinds:
            tag = uuid.uuid4().hex[:8]
            spec = tagged_spec(kind, steps, tag)
            self.pace[tag] = latency_ms * kind.latency_scale
            run_id = create(spec, job=kind.job)
            new.append(Tracked(kind, run_id, kind.prompts(spec), steps))
        self.fake.configure(latency_ms_by_text=self.pace)
        for r in new if send else ():
            self.send(r.kind.job.task_name, {"run_id": str(r.run_id)})
        self.runs += new
        return new

    def rows(self, runs: Iterable[Tracked] | None = None) -> list[dict[str, Any]]:
        """The run rows, read by the test process (which rides out the fault like the workers do)."""
        runs = list(self.runs if runs is None else runs)
        return reread(lambda: [run_row(r.run_id, job=r.kind.job) for r in runs])

    def wait_progressed(self, steps: int, runs: Iterable[Tracked] | None = None, timeout_s: float = 60) -> None:
        """Until every run (of ``runs``) has ``steps`` checkpointed steps, or ended."""
        runs = list(self.runs if runs is None else runs)

        def progressed() -> bool:
            return all(row["completed_steps"] >= steps or row["status"] not in ("queued", "running")
                       for row in self.rows(runs))

        wait_for(progressed, timeout_s=timeout_s, interval_s=0.1, what=f"every run to checkpoint {steps} steps")

    def fault(self, what: str, *, mid_run: bool = True) -> Fault:
        """Call just before injecting a fault: a snapshot of what is recorded and what was asked.
        ``mid_run``: fail the test if every run is nearly done (the fault would prove nothing)."""
        f = Fault(what, time.monotonic())
        for r in self.runs:
            f.recorded[r.run_id] = set(reread(lambda r=r: results(r.run_id, job=r.kind.job)))
        counts = Counts(self.fake)  # read after the results: a step recorded then was asked by then
        for r in self.runs:
            f.asked[r.run_id] = r.asked(counts)
        assert not mid_run or any(len(v) < r.steps - 10 for r, v in zip(self.runs, f.recorded.values(), strict=True)), \
            f"every run was nearly done before {what}: the scenario proves nothing"
        self.faults.append(f)
        return f

    def wait_recovered(self, since: float | None = None, runs: Iterable[Tracked] | None = None,
                       timeout_s: float = 60) -> float:
        """Seconds from ``since`` (the fault's end) until every unfinished run (of ``runs``) checkpointed
        a new step."""
        since = time.monotonic() if since is None else since
        runs = list(self.runs if runs is None else runs)
        before = {row["id"]: row["completed_steps"] for row in self.rows(runs)}

        def moved() -> bool:
            return all(row["completed_steps"] > before[row["id"]] or row["status"] in ("completed", "failed")
                       for row in self.rows(runs))

        wait_for(moved, timeout_s=timeout_s, interval_s=0.1, what="every run to checkpoint again after the fault")
        seconds = time.monotonic() - since
        self.recovery_s.append(seconds)
        return seconds

    def wait_finished(self, timeout_s: float = 120) -> list[dict[str, Any]]:
        ended = ("completed", "failed", "cancelled")

        def done() -> list[dict[str, Any]] | None:
            rows = self.rows()
            return rows if all(r["status"] in ended for r in rows) else None

        try:
            return wait_for(done, timeout_s=timeout_s, interval_s=0.2, what="every run to end")
        except BaseException:
            stuck = [{k: r[k] for k in ("id", "status", "completed_steps", "lease_owner", "lease_expires_at",
                                        "fencing_token", "error_message", "last_updated_at") if k in r}
                     for r in self.rows() if r["status"] not in ended]
            print(f"runs that did not end ({len(stuck)}):", *stuck, sep="\n  ")
            raise

    def check(self, timeout_s: float = 120) -> Figures:
        """Wait for every run to end, then assert the promises; the figures measured."""
        rows = {row["id"]: row for row in self.wait_finished(timeout_s)}
        unit = 2 * get_settings().step_concurrency
        counts = Counts(self.fake)
        extra_calls, most = 0, 0
        for r in self.runs:
            row = rows[r.run_id]
            label = f"{r.kind.key} run {r.run_id}"
            assert row["status"] == "completed", f"{label} ended {row['status']}: {row['error_message']}"
            assert sorted(reread(lambda r=r: results(r.run_id, job=r.kind.job))) == list(range(r.steps)), label
            assert row["completed_steps"] == r.steps, label
            asked = r.asked(counts)
            assert all(n >= 1 for n in asked), f"{label}: steps never answered yet recorded"
            for f in self.faults:
                again = {i: (f.asked[r.run_id][i], asked[i]) for i in f.recorded[r.run_id]
                         if asked[i] != f.asked[r.run_id][i]}
                assert not again, f"{label}: steps recorded before {f.what} were asked again (then, now): {again}"
            extras = sum(n - 1 for n in asked)
            assert max(asked) <= 1 + len(self.faults), f"{label}: a step asked {max(asked)} times over {len(self.faults)} faults"
            assert extras <= max(1, len(self.faults)) * unit * r.kind.group, f"{label}: {extras} calls asked again"
            extra_calls += extras
            most = max(most, max(asked))
        stale = stale_writes(self.db_url)
        assert not stale, f"writes accepted from a stale claim: {stale}"
        return Figures(runs=len(self.runs), steps=sum(r.steps for r in self.runs), faults=len(self.faults),
                       extra_calls=extra_calls, most_asked=most, stale_writes=len(stale),
                       recovery_s=max(self.recovery_s) if self.recovery_s else None)
