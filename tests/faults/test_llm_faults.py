"""Scenario 9: the LLM provider down for two minutes (connections refused), then back.

Runs wait with backoff and complete; none ends ``failed`` for an outage shorter than the retry
window (``DATAENGINE_TRANSIENT_RETRY_WINDOW_S``, 15 minutes by default). The workers reach the
stand-in through a loopback proxy that stops listening, so every connect is refused by the kernel.
"""

from __future__ import annotations

import re
import time

import pytest
from tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(420)
OUTAGE_S = 120
#: The longest wait between two retries here (60 s by default): the run is back within it of the provider.
BACKOFF_MAX_S = 10


def test_the_llm_provider_down_for_two_minutes(workers, fake_llm, db_url, fleet_on, report):
    """9. The LLM provider down for 2 minutes (connection refused), then back: runs wait with backoff
    (at most ``DATAENGINE_RETRY_BACKOFF_MAX_S`` between tries) and complete; none ends failed."""
    upstream = fake_llm.base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = TcpProxy((upstream[0], int(upstream[1])))
    try:
        base_url = f"http://127.0.0.1:{proxy.port}/v1"
        worker = workers("a", env={"OPENAI_BASE_URL": base_url, "DATAENGINE_RETRY_BACKOFF_MAX_S": str(BACKOFF_MAX_S)})
        fleet = fleet_on(db_url)
        fleet.submit()
        fleet.wait_progressed(10)
        fleet.fault("the LLM provider down")
        proxy.refuse()
        time.sleep(OUTAGE_S)  # the outage itself
        during = fleet.rows()
        assert all(r["status"] != "failed" for r in during), [(r["status"], r["error_message"]) for r in during]
        proxy.restore()
        restored = time.monotonic()
        recovered = fleet.wait_recovered(restored, timeout_s=BACKOFF_MAX_S + 60)
        figures = fleet.check(timeout_s=180)
        log = worker.log_text()
        retries = {str(r.run_id): len(re.findall(rf"Retry in .*run_id={r.run_id}", log)) for r in fleet.runs}
        # Backoff, not a hammering: from 2 s doubling to 10 s, about a dozen tries in two minutes.
        assert all(2 <= n <= OUTAGE_S / 2 for n in retries.values()), retries
        assert worker.proc.poll() is None
        report(figures, recovery_s=recovered, outage_s=OUTAGE_S, retries_per_run=max(retries.values()),
               backoff_max_s=BACKOFF_MAX_S)
    finally:
        proxy.close()
