"""Flower's settings: ``celery -A dataengine flower`` reads this file from the current directory.

Flower applies its ``FLOWER_*`` variables, then this file, then its command line, so a value set
here beats the variable of the same name and loses to a flag. Basic auth comes from the engine's
settings (``FLOWER_BASIC_AUTH``, the variable Flower itself reads); without it Flower does not
start, unless it is started for local use on purpose (``DATAENGINE_FLOWER_ALLOW_NO_AUTH=true``).
"""

from __future__ import annotations

import sys

from celery.platforms import set_pdeathsig
from pydantic import ValidationError
from tornado.options import options

from dataengine import app as _app
from dataengine.infra.settings import get_settings

# Tornado takes every global whose name is one of Flower's options, so helpers start with "_".
try:
    _settings = get_settings()
except ValidationError as _refused:  # a placeholder password in production, say: the reason, no trace
    sys.exit(f"Flower refuses to start: {_refused}")

_NO_AUTH = """\
Flower refuses to start without authentication: it shows every task of the fleet and can stop
workers. Set FLOWER_BASIC_AUTH=user:password (several pairs separated by commas), or pass
--basic-auth=user:password. To run it on this machine without a password on purpose (never in
production), set DATAENGINE_FLOWER_ALLOW_NO_AUTH=true; it then listens on 127.0.0.1 only unless
--address says otherwise."""

_BAD_PAIR = """\
Flower refuses to start: FLOWER_BASIC_AUTH must be user:password (several pairs separated by
commas), and {bad} of its {total} entries have no user or no password."""


def _unless_set(name: str, ours: object) -> object:
    """Our default for a Flower option, unless ``FLOWER_<NAME>`` or a flag already changed Flower's."""
    current = getattr(options, name)
    # Flower's own command.py reads this table too (tornado keys it by the name with dashes).
    return ours if current == options._options[name.replace("_", "-")].default else current


def _pairs(text: str) -> list[str]:
    return [pair.strip() for pair in text.split(",") if pair.strip()]


# FLOWER_BASIC_AUTH and --basic-auth are both in ``options`` by now; the settings read the former too.
_secret = _settings.flower_basic_auth
_credentials = _pairs(_secret.get_secret_value()) if _secret is not None else []
_credentials = _credentials or [pair for pair in options.basic_auth or [] if pair.strip()]
_bad = [pair for pair in _credentials if not all(part.strip() for part in pair.partition(":")[::2])]
if _bad:
    sys.exit(_BAD_PAIR.format(bad=len(_bad), total=len(_credentials)))
if not (_credentials or options.auth or _settings.flower_allow_no_auth):
    sys.exit(_NO_AUTH)
if _credentials:
    basic_auth = _credentials
else:
    basic_auth = []  # a blank FLOWER_BASIC_AUTH is no password, not a password nobody can type
    if not options.auth:
        print("Flower is running WITHOUT authentication (DATAENGINE_FLOWER_ALLOW_NO_AUTH=true).", file=sys.stderr)

# Loopback unless told otherwise (a container publishing the port passes --address=0.0.0.0).
address = options.address or "127.0.0.1"
# Each deploy brings workers with new names: forget the ones offline for an hour.
purge_offline_workers = options.purge_offline_workers or 3600
# Tasks kept in memory (Flower's default is 100,000); each holds its arguments' and result's text.
max_tasks = _unless_set("max_tasks", 10_000)
# The run id travels as the task's keyword argument: show it next to the name.
tasks_columns = _unless_set("tasks_columns", "name,uuid,state,kwargs,result,received,runtime,worker")

# Flower reads no task message, so it needs not the workers' transport (dataengine.worker.broker_guards), and
# with kombu's own its Broker page and /api/queues/length can count the queues: Flower knows a
# broker by its URL's scheme, which would read "dataengine.worker.broker_guards:Transport" instead of "redis".
_app.conf.broker_transport = None

if _settings.die_with_parent:  # started by the demo or a test: end with it, as workers and beat do
    set_pdeathsig("SIGKILL")
