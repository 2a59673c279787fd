"""celeryconfig follows the settings: what Flower gets, and what every send costs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("value", "expected"), [(None, "False"), ("true", "True")])
def test_task_sent_events_are_off_unless_asked_for(value, expected):
    """A task-sent event is a second Redis round trip on every send (a third of a submit's cost)."""
    env = {k: v for k, v in os.environ.items() if k != "DATAENGINE_TASK_SENT_EVENTS"}
    if value is not None:
        env["DATAENGINE_TASK_SENT_EVENTS"] = value
    code = "import celeryconfig; print(celeryconfig.task_send_sent_event, celeryconfig.worker_send_task_events)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [expected, "True"]  # the worker's events (Flower's task list) stay on
