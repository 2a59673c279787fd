"""Celery settings only; every value comes from ``dataengine.infra.settings``."""

from __future__ import annotations

from kombu import Queue

from dataengine.infra.redis_keys import REDBEAT_KEY_PREFIX
from dataengine.infra.settings import get_settings, job_module_names
from dataengine.infra.tiers import DEFAULT_TIER, QUEUES
from dataengine.worker.broker_guards import BROKER_CONNECT_TIMEOUT_S, BROKER_SOCKET_TIMEOUT_S, RESULT_RETRY_MAX_SLEEP_MS

_s = get_settings()

broker_url = _s.redis_url
result_backend = _s.redis_url
# kombu's Redis transport, except that a malformed queue item is set aside instead of ending the
# worker (dataengine.worker.broker_guards); an explicit transport wins over the URL's scheme.
broker_transport = "dataengine.worker.broker_guards:Transport"
broker_connection_retry_on_startup = True
# A run needs no broker while it works (its lease lives in PostgreSQL): a broker outage only
# pauses the flow of messages. The consumer reconnects for ever, no socket waits without a
# limit, and a finished task's result is stored once Redis answers again.
broker_connection_max_retries = None
broker_connection_timeout = BROKER_CONNECT_TIMEOUT_S
redis_socket_timeout = BROKER_SOCKET_TIMEOUT_S
redis_socket_connect_timeout = BROKER_CONNECT_TIMEOUT_S
result_backend_always_retry = True
result_backend_max_sleep_between_retries_ms = RESULT_RETRY_MAX_SLEEP_MS
# Redis hides an unacknowledged message this long; it must outlast the longest run, or Redis
# hands a live run to a second worker. Recovery of dead workers is the sweeper's job, in seconds.
broker_transport_options = {
    "visibility_timeout": _s.visibility_timeout_s,
    # The queues below in the order given, not round robin: a higher tier's run is taken first.
    "queue_order_strategy": "priority",
    "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
    "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
}
result_backend_transport_options = {"visibility_timeout": _s.visibility_timeout_s}

# One queue per priority tier, highest first (dataengine.infra.tiers); normal's is Celery's default
# queue, where producers that name no queue send. A worker reads every tier's.
task_queues = [Queue(name, routing_key=name) for name in QUEUES.values()]
task_default_queue = QUEUES[DEFAULT_TIER]

# JSON only: a producer in any language can send, nobody can smuggle a pickle.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Acknowledge after the run, requeue if the pool process dies, take one message at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Not True: Celery would terminate the pool process of every running run on a Redis blip, and
# the steps it had in flight would be paid again.
worker_cancel_long_running_tasks_on_connection_loss = False
task_track_started = True
# Every task checks its message before Celery builds the request: a malformed one is rejected
# and set aside with its reason, not allowed to end the worker (dataengine.worker.broker_guards).
task_annotations = {"*": {"Request": "dataengine.worker.broker_guards:Request", "Strategy": "dataengine.worker.broker_guards:strategy"}}
result_expires = 7 * 24 * 3600

# Events for Flower (task-sent only when asked for: it costs every send a second round trip).
worker_send_task_events = True
task_send_sent_event = _s.task_sent_events

include = job_module_names()  # each registers its job and its tasks

# One beat at a time across the fleet (celery-redbeat holds a lock in Redis); a broker outage
# pauses the schedule instead of ending beat and the sweeper in it (dataengine.worker.beat).
beat_scheduler = "dataengine.worker.beat:Scheduler"
redbeat_redis_url = _s.redis_url
redbeat_key_prefix = REDBEAT_KEY_PREFIX
redbeat_redis_options = {"socket_timeout": BROKER_SOCKET_TIMEOUT_S, "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S}
redbeat_lock_timeout = 60
beat_max_loop_interval = 5
# The jobs' own schedules (``Job.schedules``) are added by beat's scheduler when it starts.
beat_schedule: dict = {}
