"""Every Redis key the engine names itself, in one place (Celery's and kombu's own keys are theirs)."""

from __future__ import annotations

#: Messages refused by a worker (malformed, not JSON, unknown task): a capped list, newest first.
REJECTED_KEY = "dataengine:rejected"
#: celery-redbeat's keys (schedule, entries, statics, the one-beat lock) start with this.
REDBEAT_KEY_PREFIX = "dataengine:redbeat"
#: Set by the first sweeper that finds it missing; gone again means Redis lost its data (restarted
#: without persistence, flushed, failed over to an empty replica), and with it the queued messages.
BROKER_EPOCH_KEY = "dataengine:broker:epoch"
