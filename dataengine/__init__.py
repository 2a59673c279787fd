"""dataengine: durable Celery runs for long LLM jobs, checkpointed in PostgreSQL.

What a job author imports is here, and only here (``__all__``); every other module of the package
is the engine's own and may change. A job is its tables, its spec, its step and its summary::

    from dataengine import Job, NewRun, RunMixin, StepMixin, StepOutcome, StepResultMixin, llm, register

``celery -A dataengine worker`` finds the Celery ``app`` here too. Nothing is imported until it is
first used: importing ``dataengine`` (or a job module) reads no settings and starts nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for type checkers and readers; at run time they load on first use
    from dataengine.cli.output import console, fail
    from dataengine.engine.jobs import Job, JobDemo, NewRun, PlannedCall, StepOutcome, get_job, register
    from dataengine.engine.submitting import SpecText, create_run
    from dataengine.infra.db import session_scope
    from dataengine.infra.errors import DataEngineError, RunFatal, SpecInvalid
    from dataengine.infra.settings import JobSettings, get_settings
    from dataengine.llm import calls as llm
    from dataengine.llm.calls import Usage
    from dataengine.llm.workspaces import default_model
    from dataengine.testing.standin_llm import FakeLLMServer
    from dataengine.worker.app import app, enqueue
    from dataengine.worker.schedules import parse_schedule
    from models.base import Base, RunMixin, StepMixin, StepResultMixin, new_base

#: Each public name, and the module it comes from.
_PUBLIC = {
    # Defining and registering a job
    "Job": "dataengine.engine.jobs",
    "register": "dataengine.engine.jobs",
    "get_job": "dataengine.engine.jobs",
    "NewRun": "dataengine.engine.jobs",
    "StepOutcome": "dataengine.engine.jobs",
    "PlannedCall": "dataengine.engine.jobs",
    "JobDemo": "dataengine.engine.jobs",
    "SpecText": "dataengine.engine.submitting",
    "create_run": "dataengine.engine.submitting",
    "JobSettings": "dataengine.infra.settings",
    "parse_schedule": "dataengine.worker.schedules",
    # Its tables
    "RunMixin": "models.base",
    "StepMixin": "models.base",
    "StepResultMixin": "models.base",
    "Base": "models.base",
    "new_base": "models.base",
    "session_scope": "dataengine.infra.db",
    # The only door to the LLM provider: llm.chat, llm.parse, llm.embed
    "llm": None,
    "Usage": "dataengine.llm.calls",
    "default_model": "dataengine.llm.workspaces",
    # Errors a job raises or maps
    "DataEngineError": "dataengine.infra.errors",
    "SpecInvalid": "dataengine.infra.errors",
    "RunFatal": "dataengine.infra.errors",
    # Testing a job: the OpenAI-compatible stand-in server (``dataengine fake-llm``)
    "FakeLLMServer": "dataengine.testing.standin_llm",
    # A job's own commands (``Job.cli``): print, fail, send a run's task
    "console": "dataengine.cli.output",
    "fail": "dataengine.cli.output",
    "enqueue": "dataengine.worker.app",
    # The engine's settings, and the Celery app (``celery -A dataengine``)
    "get_settings": "dataengine.infra.settings",
    "app": "dataengine.worker.app",
}

__all__ = [
    "Base", "DataEngineError", "FakeLLMServer", "Job", "JobDemo", "JobSettings", "NewRun", "PlannedCall", "RunFatal", "RunMixin",
    "SpecInvalid", "SpecText", "StepMixin", "StepOutcome", "StepResultMixin", "Usage", "app", "console", "create_run",
    "default_model", "enqueue", "fail", "get_job", "get_settings", "llm", "new_base", "parse_schedule", "register",
    "session_scope",
]


def __getattr__(name: str) -> Any:
    if name == "celery":  # the other name Celery's ``-A dataengine`` looks for
        name = "app"
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dataengine' has no attribute {name!r}")
    module = _PUBLIC[name]
    value = import_module(f"dataengine.{name}") if module is None else getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
