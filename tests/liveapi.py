"""A real ``dataengine api`` process on a free loopback port, for tests that talk to it over HTTP
(the OpenAPI check, the runs page in a browser)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
#: How long ``dataengine api`` may take to answer ``/health``.
START_TIMEOUT_S = 30.0


class APIBase(str):
    """A live API's base URL (``http://127.0.0.1:PORT``), and the ``pid`` of the process serving it."""

    pid: int


@contextmanager
def live_api(env: dict[str, str], *, log_path: Path) -> Iterator[APIBase]:
    """``dataengine api`` with ``env`` over this process's environment; yields its base URL (with the
    serving process's ``pid``), then stops it.

    ``env`` names the database, Redis and the key (``DATA_ENGINE_API_KEY``); the process dies with
    this one, and its log is ``log_path``.
    """
    port = free_port()
    base = APIBase(f"http://127.0.0.1:{port}")
    full_env = {**os.environ, "DATAENGINE_DIE_WITH_PARENT": "1", "DATAENGINE_LOG_LEVEL": "WARNING", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dataengine.cli.main", "api", "--port", str(port)], cwd=ROOT,
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)
        base.pid = proc.pid
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"dataengine api did not start: {log_path}")
                    time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` now (a live API's, say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")
