#!/usr/bin/env bash
# The end-to-end demo: install, migrate, start the stand-in LLM, a worker and beat, run a
# PropertyAudit with a live progress bar, SIGKILL the worker half-way and watch it resume.
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/dataengine demo "$@"
