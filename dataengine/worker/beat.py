"""Beat's scheduler: celery-redbeat's, riding out broker outages instead of exiting.

redbeat lets a Redis error escape ``tick()`` (a refused connection while Redis restarts, a
timeout while it is stalled, the lock gone when it comes back empty) and celery beat exits,
taking the recovery sweeper thread in it along. :class:`Scheduler` logs one line, tries again
every ``RETRY_S``, and when Redis answers again takes redbeat's lock back (or stands by while
another beat holds it) and stores the static ``beat_schedule`` entries again (Redis may have
come back empty) before the schedule runs on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.exceptions import OperationalError
from redbeat import RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("dataengine.worker.beat")

#: What a broker outage raises on beat's side; anything else still ends beat, as it should.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, LockError, OperationalError)
#: Seconds between attempts while Redis is away.
RETRY_S = 1.0


def job_schedules() -> dict[str, dict[str, Any]]:
    """Beat entries of the registered jobs' schedules (``Job.schedules``): each sends the job's task
    without arguments."""
    from dataengine.engine.jobs import load_jobs
    from dataengine.worker.schedules import parse_schedule

    return {name: {"task": job.task_name, "schedule": parse_schedule(when)}
            for job in load_jobs() if job.schedules is not None
            for name, when in job.schedules().items() if when}


class Scheduler(RedBeatScheduler):
    """redbeat's scheduler; a broker outage pauses the schedule instead of ending beat."""

    _down_since: float | None = None
    _standing_by = False

    def setup_schedule(self) -> None:
        """Store the static entries and the jobs' schedules now, or once Redis answers if it does not at
        start-up (redbeat's lock: two beats running by accident still fire each tick once)."""
        self.app.conf.beat_schedule.update(job_schedules())
        try:
            super().setup_schedule()
        except OUTAGE_ERRORS as exc:
            self._went_down(exc)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of the schedule; the seconds until the next."""
        try:
            if self._down_since is not None or (self.lock_key and self.lock is None):
                held = self._regain()
                self._came_back()
                if not held:
                    return self.max_interval
            interval = super().tick(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            self._went_down(exc)
            return RETRY_S
        self._came_back()
        return interval

    def close(self) -> None:
        """Release the lock if Redis still answers; a beat stopping during an outage just stops."""
        if self.lock is not None:
            log.info("beat: Releasing lock")
            try:
                if self.lock.owned():
                    self.lock.release()
            except OUTAGE_ERRORS as exc:
                log.warning("beat: could not release the lock (%s: %s); it expires by itself",
                            type(exc).__name__, exc)
            self.lock = None
        super().close()

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("beat: schedule paused by a broker error (%s: %s); trying again every %.0fs",
                        type(exc).__name__, exc, RETRY_S)

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning("beat: the broker answers again after %.0fs", time.monotonic() - self._down_since)
            self._down_since = None

    def _regain(self) -> bool:
        """Hold redbeat's lock again and re-store the static entries; False while another beat holds it."""
        if self.lock_key and (self.lock is None or not self.lock.owned()):
            lock = self._new_lock()
            if not lock.acquire(blocking=False):
                if not self._standing_by:
                    log.warning("beat: another beat holds %s; standing by", self.lock_key)
                self.lock, self._standing_by = None, True
                return False
            self.lock, self._standing_by = lock, False
            log.info("beat: Acquired lock")
        super().setup_schedule()  # Redis may have come back empty
        return True

    def _new_lock(self) -> Any:
        # As redbeat's own beat_init handler builds it, with its extend-to script.
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        return lock
