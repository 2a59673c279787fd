"""The heartbeat thread outlives any one failure: without it every lease of the process would lapse."""

from __future__ import annotations

import time

from conftest import wait_for

from dataengine.engine import heartbeats


def test_the_heartbeat_thread_survives_refused_settings_and_a_failing_beat(monkeypatch):
    real_settings = heartbeats.get_settings
    asked: list[float] = []
    beats: list[float] = []

    def refused_at_first():  # settings refused under a live process (a test, an edited environment)
        asked.append(time.monotonic())
        if len(asked) <= 2:
            raise ValueError("DATA_ENGINE_API_KEY is a placeholder")
        return real_settings()

    def beat() -> None:
        beats.append(time.monotonic())
        if len(beats) == 1:
            raise RuntimeError("the database went away mid-beat")

    thread = heartbeats.Heartbeats()
    monkeypatch.setattr(heartbeats, "get_settings", refused_at_first)
    monkeypatch.setattr(thread, "beat", beat)
    monkeypatch.setattr(thread, "forget_idle", lambda: None)
    thread.start()
    wait_for(lambda: len(beats) >= 3, timeout_s=10, what="the thread to beat on after both failures")
    assert thread.is_alive()
