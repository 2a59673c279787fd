"""The peer DBOS: one workflow of N ``@DBOS.step`` steps, as the side-by-side benchmarks run it.

A benchmark imports it and launches DBOS in its own process, or runs it as a script when it
needs a DBOS process it can SIGKILL. DBOS recovers only the workflows of its own executor id
and application version, so every process registers this same workflow and step under a
pinned version, and names its executor.

    python bench/peers/dbos_app.py --database-url URL --executor-id ID [--start WF --steps N] [--die-at-step K]
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbos import DBOS, SetWorkflowID, WorkflowHandle

APP_NAME = "de-bench-peer"
#: Pinned: DBOS computes a version from the workflows' source otherwise, and recovers only its own.
APP_VERSION = "de-bench"


@dataclass
class Probe:
    """What a benchmark sees of this process's workflows: when one was last entered, and a hook as a step begins."""

    entered: float | None = None
    on_step: Callable[[int], None] | None = None


PROBE = Probe()


@DBOS.step()
def step(index: int, sleep_s: float) -> int:
    """One step: ``sleep_s`` of waiting (standing in for an LLM call), then its index as the recorded output."""
    if PROBE.on_step is not None:
        PROBE.on_step(index)
    if sleep_s:
        time.sleep(sleep_s)
    return index


@DBOS.workflow()
def steps_workflow(steps: int, sleep_s: float = 0.0) -> int:
    """``steps`` steps one after another, as a long run's queries; a recovery replays the recorded ones."""
    PROBE.entered = time.perf_counter()
    for index in range(steps):
        step(index, sleep_s)
    return steps


def launch(*, database_url: str, executor_id: str) -> None:
    """Configure DBOS on its system database and launch it (which recovers this executor's pending workflows)."""
    DBOS(config={
        "name": APP_NAME,
        "system_database_url": database_url,
        "application_version": APP_VERSION,
        "executor_id": executor_id,
        "log_level": "WARNING",
    })
    DBOS.launch()


def start(workflow_id: str, *, steps: int, sleep_s: float = 0.0) -> WorkflowHandle[Any]:
    """Start ``steps_workflow`` in the background under a chosen workflow id."""
    with SetWorkflowID(workflow_id):
        return DBOS.start_workflow(steps_workflow, steps, sleep_s)


def main() -> None:
    parser = argparse.ArgumentParser(description="A DBOS executor process for the side-by-side benchmarks.")
    parser.add_argument("--database-url", required=True, help="DBOS's system database (SQLAlchemy URL)")
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--start", metavar="WORKFLOW_ID", help="start a workflow (else only recover pending ones)")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--sleep-ms", type=float, default=0.0, help="each step's wait")
    parser.add_argument("--die-at-step", type=int, help="SIGKILL this process as that step begins (a crash)")
    args = parser.parse_args()
    if args.die_at_step is not None:
        PROBE.on_step = lambda index: os.kill(os.getpid(), signal.SIGKILL) if index == args.die_at_step else None
    launch(database_url=args.database_url, executor_id=args.executor_id)
    if args.start:
        start(args.start, steps=args.steps, sleep_s=args.sleep_ms / 1000)
    threading.Event().wait()  # the workflow runs on DBOS's threads until this process is killed


if __name__ == "__main__":
    main()
