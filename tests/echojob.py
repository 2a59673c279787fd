"""Echo registered as a job, for worker and CLI processes started with ``DATAENGINE_JOB_MODULES``
naming this module (and ``tests/`` on ``PYTHONPATH``)."""

from enginejob import ECHO

from dataengine import register

JOB = register(ECHO)
