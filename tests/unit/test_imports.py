"""Importing has no side effects: the engine's modules and a job's build no Celery app and read no
settings until a process starts (so a broken environment fails where it is used, not on import)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_engine_and_a_job_builds_no_app_and_reads_no_settings():
    code = (
        "import sys\n"
        "import dataengine, dataengine.infra.errors, dataengine.engine.jobs, dataengine.engine.runs, dataengine.engine.runloop\n"
        "import dataengine.engine.sweeper, dataengine.engine.submitting, tasks.propertyaudit\n"
        "from dataengine.infra.settings import get_settings\n"
        "print(int(get_settings.loaded), 'dataengine.worker.app' in sys.modules, 'celeryconfig' in sys.modules)\n"
    )
    # An invalid setting would raise at once if anything read the settings on import.
    env = {**os.environ, "DATAENGINE_LEASE_S": "not a number"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False", "False"]


def test_the_celery_app_is_still_found_the_ordinary_way():
    code = "from celery.app.utils import find_app; print(find_app('dataengine').main)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dataengine"
