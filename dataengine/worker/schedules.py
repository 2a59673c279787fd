"""Schedules as users write them: a five-field cron expression (UTC) or a number of seconds."""

from __future__ import annotations

from datetime import timedelta

from celery.schedules import crontab, schedule


def parse_schedule(text: str) -> crontab | schedule:
    """The celery schedule for ``text`` (``"0 3 * * *"`` or ``"3600"``), or a ``ValueError`` saying what is wrong."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds <= 0:
            raise ValueError(f"a schedule in seconds must be positive, got {value!r}")
        return schedule(run_every=timedelta(seconds=seconds))
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"{value!r} is neither a number of seconds nor a five-field cron expression "
                         "(minute hour day-of-month month day-of-week)")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid cron expression: {exc}") from None
