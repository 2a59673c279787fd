"""Fair share between workspaces on the engine's key (issue 25, target 1).

One worker (2 pool processes), the stand-in at 1 s latency, the fleet's limit 600 RPM
(``DATAENGINE_LLM_RPM``); two workspaces without keys of their own (they share the engine's key and
limit). First workspace B's one audit of 20 queries alone; then workspace A submits 40 audits of 50
queries, and 5 s later B submits its audit again. Target: B's audit completes within 2 × its time
alone. (A's audits are not waited for: 4,000 calls at 10 a second.)
"""

from __future__ import annotations

import os
import sys
import time

import _common

TARGET = 2.0
RPM = 600

_common.configure("fairness")
from _fleet import stand_in, unfinished  # noqa: E402  after configure(): it imports the engine

from dataengine.llm.workspaces import add_workspace  # noqa: E402
from dataengine.testing.processes import start_worker  # noqa: E402
from dataengine.worker.app import enqueue  # noqa: E402


def audit(queries: int, workspace: str) -> str:
    run_id = _common.new_audit_run(queries, workspace_id=workspace)
    enqueue("propertyaudit.run", {"run_id": run_id})
    return run_id


def until_done(run_id: str) -> float:
    began = time.monotonic()
    while unfinished([run_id]):
        time.sleep(0.05)
    return time.monotonic() - began


def main() -> int:
    _common.header("Fairness", cpus=os.cpu_count(), rpm=RPM, latency_ms=1000, worker="2 pool processes")
    with _common.bench_environment() as llm:
        assert llm is not None
        stand_in(llm, latency_ms=1000)
        for ws in ("a", "b"):
            add_workspace(workspace_id=ws, name=ws, api_key=None)
        worker = start_worker("fair", env={"DATAENGINE_LLM_RPM": str(RPM)}, log_dir=_common.LOG_DIR, concurrency=2)
        try:
            worker.wait_ready(timeout_s=60)
            alone = until_done(audit(20, "b"))
            print(f"   B's audit of 20 queries alone: {alone:.1f} s")
            for _ in range(40):
                audit(50, "a")
            time.sleep(5)  # the scenario: A's backlog under way
            shared = until_done(audit(20, "b"))
            print(f"   B's audit with A's 40 audits of 50 queries waiting: {shared:.1f} s")
        finally:
            worker.stop()
    ratio = shared / alone
    return 0 if _common.verdict("B's audit beside A's backlog", ratio <= TARGET,
                                f"{ratio:.2f} × its time alone (target ≤ {TARGET:g} ×)") else 1


if __name__ == "__main__":
    sys.exit(main())
