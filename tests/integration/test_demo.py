"""The quickstart's first command, end to end: ``dataengine demo`` kills its worker and still finishes,
for PropertyAudit (the default) and ReviewFlow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow  # real worker processes
@pytest.mark.timeout(150)
@pytest.mark.parametrize(("args", "noun", "plural"), [([], "query", "queries"), (["reviewflow"], "review", "reviews")])
def test_the_demo_resumes_after_its_worker_is_killed_and_pays_nothing_twice(engine_env, tmp_path, args, noun, plural):
    cli = Path(sys.executable).with_name("dataengine")
    done = subprocess.run(
        [str(cli), "demo", *args, "--steps", "10", "--latency-ms", "150"],
        env={**os.environ, **engine_env, "COLUMNS": "200"},
        cwd=tmp_path, capture_output=True, text=True, timeout=140, stdin=subprocess.DEVNULL,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "not a real model" in out
    assert "SIGKILL worker demo-1" in out and re.search(rf"demo-2 resumed at {noun} \d+/10", out)
    assert "Nothing paid twice: 0 answers that had returned before the kill were asked again" in out, out
    assert f"10/10 {plural} completed" in out
    assert (tmp_path / ".dataengine" / "demo" / "demo-2.log").exists()


def test_the_demo_names_the_jobs_it_knows(engine_env):
    cli = Path(sys.executable).with_name("dataengine")
    done = subprocess.run([str(cli), "demo", "nosuch"], env={**os.environ, **engine_env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "no demo for 'nosuch'; known: propertyaudit, reviewflow" in done.stdout
