"""The quickstart's first command, end to end: ``dataengine demo`` kills its worker and still finishes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(150)
def test_the_demo_resumes_after_its_worker_is_killed_and_pays_nothing_twice(engine_env, tmp_path):
    cli = Path(sys.executable).with_name("dataengine")
    done = subprocess.run(
        [str(cli), "demo", "--queries", "10", "--latency-ms", "150"],
        env={**os.environ, **engine_env, "COLUMNS": "200"},
        cwd=tmp_path, capture_output=True, text=True, timeout=140, stdin=subprocess.DEVNULL,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "not a real model" in out
    assert "SIGKILL worker demo-1" in out and "demo-2 resumed at query 6/10" in out
    assert "Nothing paid twice" in out and "10/10 queries completed" in out
    assert (tmp_path / ".dataengine" / "demo" / "demo-2.log").exists()
