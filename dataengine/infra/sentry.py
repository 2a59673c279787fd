"""Optional error reporting to Sentry (``SENTRY_DSN``): the SDK's Celery and logging integrations,
each event tagged with its run (``run_id``, ``task_id``, ``kind``, ``step``, ``worker``) and scrubbed of
every secret the settings hold before it leaves the process.

Workers and beat call :func:`init_sentry` as they start, the API when it is created; without a DSN it
does nothing and sentry-sdk is not imported.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from dataengine.infra.logs import RUN_FIELDS
from dataengine.infra.settings import Settings, get_settings

log = logging.getLogger(__name__)
REDACTED = "[redacted]"
_started = False


def secrets_of(s: Settings) -> list[str]:
    """Every secret value the settings hold: keys, basic auth, and the passwords in URLs."""
    found = [v.get_secret_value() for v in (s.openai_api_key, s.api_key, s.flower_basic_auth, s.sentry_dsn)
             if v is not None]
    found += s.encryption_key.get_secret_value().split(",") if s.encryption_key is not None else []
    found += s.session_secret.get_secret_value().split(",") if s.session_secret is not None else []
    for url in (s.database_url, s.redis_url, *found):
        password = urlsplit(url).password if "://" in url else None
        if password:
            found.append(password)
    dsn_key = urlsplit(s.sentry_dsn.get_secret_value()).username if s.sentry_dsn is not None else None
    return sorted({x for x in [*found, dsn_key] if x and len(x) >= 4}, key=len, reverse=True)


def scrub(value: Any, secrets: list[str]) -> Any:
    """``value`` with every secret replaced by ``[redacted]``, however deep in lists and dicts."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """Tag the event with its run's fields (from the log record's extras) and scrub the secrets."""
    extra = event.get("extra") or {}
    tags = event.setdefault("tags", {})
    for field in RUN_FIELDS:
        if extra.get(field) is not None:
            tags[field] = str(extra[field])
    return scrub(event, secrets_of(get_settings()))


def init_sentry(component: str) -> bool:
    """Start reporting to ``SENTRY_DSN`` from this process (``component``: worker, beat, api); False without one."""
    global _started
    s = get_settings()
    if s.sentry_dsn is None or not s.sentry_dsn.get_secret_value() or _started:
        return _started
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=s.sentry_dsn.get_secret_value(),
        environment=s.environment,
        integrations=[CeleryIntegration(), LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        send_default_pii=False,
        include_local_variables=False,  # a frame's locals may hold a spec, a key or a prompt
        before_send=before_send,
        before_breadcrumb=lambda crumb, hint: scrub(crumb, secrets_of(get_settings())),
    )
    sentry_sdk.set_tag("component", component)
    _started = True
    log.info("reporting errors to Sentry (%s)", urlsplit(s.sentry_dsn.get_secret_value()).hostname)
    return True
