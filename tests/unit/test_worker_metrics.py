"""The worker's /metrics reads the value files its processes write (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_scrape_while_a_process_is_creating_its_file_still_answers(tmp_path):
    """A pool process creates its value file empty and sizes it a moment later; a scrape in that moment
    answered 500 (seen in CI as a budget test's scrape failing). The empty file is skipped, the rest is read."""
    code = textwrap.dedent(f"""
        import os
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
        from prometheus_client import Counter, generate_latest
        from dataengine.infra.metrics import worker_registry
        Counter("dataengine_demo_total", "a demo", ["kind"]).labels(kind="propertyaudit").inc(3)
        open(os.path.join({str(tmp_path)!r}, "counter_999999.db"), "wb").close()  # created, not yet sized
        print(generate_latest(worker_registry({str(tmp_path)!r})).decode())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'dataengine_demo_total{kind="propertyaudit"} 3.0' in done.stdout
