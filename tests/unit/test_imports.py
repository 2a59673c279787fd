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


#: What only the HTTP API, the stand-in and the command line use (httpx imports its own command line's
#: rich and pygments; the Knowledge Refresh's fetch imports it on its first step), and the cipher a
#: workspace's own key needs when it is read.
NOT_IN_A_WORKER = {
    "fastapi", "starlette", "uvicorn", "jinja2", "typer", "rich", "pygments", "httpx",
    "dataengine.web", "dataengine.cli", "dataengine.testing", "cryptography.fernet",
}


def test_a_worker_imports_no_web_stack_and_no_command_line():
    """Issue 24's memory target, held by modules rather than megabytes: what a worker process holds once
    started (the app, every job module it serves, a pool process's set-up) is only what it uses."""
    code = (
        "import sys\n"
        "from celery.signals import worker_process_init\n"
        "from dataengine import app\n"
        "app.loader.import_default_modules()\n"  # the worker's include: every job's module
        "worker_process_init.send(sender=None)\n"  # a pool process's set-up (its LLM clients)
        "print(*sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"tasks.propertyaudit", "tasks.reviewflow", "tasks.knowledge", "openai"} <= loaded
    assert {m for m in loaded if m in NOT_IN_A_WORKER or m.partition(".")[0] in NOT_IN_A_WORKER} == set()


#: What the ``celery`` command imports for its other commands: every plugin's (Flower's, with tornado), ``celery
#: amqp``'s shell, and pygments for ``celery inspect``'s colours. A worker's pool processes would inherit them.
NOT_IN_THE_LAUNCHER = {"celery.bin.celery", "flower", "tornado", "click_repl", "prompt_toolkit", "pygments"}


def test_the_worker_launcher_runs_celery_s_worker_command_without_the_celery_command():
    code = (
        "import sys\n"
        "sys.argv = ['dataengine-worker', '--concurrency', '2', '--help']\n"
        "from dataengine.worker.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('\\nLOADED', *sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown, _, modules = out.stdout.partition("\nLOADED ")
    assert shown.startswith("Usage: dataengine-worker [OPTIONS]") and "--without-mingle" in shown and "--quiet" in shown
    loaded = set(modules.split())
    assert "celery.bin.worker" in loaded and "dataengine.worker.app" in loaded
    assert {m for m in loaded if m in NOT_IN_THE_LAUNCHER or m.partition(".")[0] in NOT_IN_THE_LAUNCHER} == set()
