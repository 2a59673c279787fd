"""Every error the engine raises derives from ``DataEngineError``; a docstring is its default message.

``retryable`` says whether Celery may retry the task (dramatiq's ``throws=`` turned around):
bad input and finished runs are never retried.
"""

from __future__ import annotations


class DataEngineError(Exception):
    """Something went wrong in the data engine."""

    retryable = False

    def __init__(self, message: str | None = None, **context: object) -> None:
        self.context = context
        # A given message is used as is (it may quote text with braces); the docstring is a template.
        super().__init__(message if message is not None else (self.__doc__ or "").format(**context).strip())


class InvalidRunId(DataEngineError):
    """run_id {run_id!r} is not a UUID string."""


class RunNotFound(DataEngineError):
    """No {job} run with id {run_id} exists: create the run row first, then send its id."""


class SpecInvalid(DataEngineError):
    """The run spec is invalid: {details}"""


class IdempotencyKeyReused(DataEngineError):
    """idempotency key {key!r} was used with a different spec (run {run_id}); use a new key"""


class LeaseLost(DataEngineError):
    """Run {run_id} was taken over by another worker (fencing token {token} is stale); this worker stops."""


class StepFailed(DataEngineError):
    """A step failed and the run ended failed: {details}"""


class TransientStepError(StepFailed):
    """A step failed for now; the run will be retried: {details}"""

    retryable = True


class DatabaseUnavailable(DataEngineError):
    """The database was unreachable for {seconds:.0f}s while {what}; run {run_id} is handed back and retried."""

    retryable = True


class StepTimedOut(DataEngineError):
    """The step was still running after {timeout_s:.0f}s (DATAENGINE_STEP_TIMEOUT_S) and was abandoned."""

    retryable = True


class RunFatal(DataEngineError):
    """A step error that ends the run at once, whatever the job's step error policy: every later step
    would fail the same way (a rejected key, a spent budget)."""


class ProviderKeyRejected(RunFatal):
    """The LLM provider rejected {whose} API key ({status}): {detail}"""


class BudgetExceeded(RunFatal):
    """budget exceeded at {noun} {step}: spent ${spent} of ${budget}"""


#: How the error message of a run paused by a daily budget begins.
PAUSED = "paused: "


class BudgetPaused(DataEngineError):
    """paused: {scope} daily budget of ${limit} is spent (${spent} today); resumes at 00:00 UTC or when it is raised"""
